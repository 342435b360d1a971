"""Decoding overhead of the distributional channel: tokens/s of a local teacher with and without it.

Runs with and without the channel are interleaved in one process (the order alternates each repetition),
so drifts of a shared machine hit both sides alike; the figure is the per-repetition ratio
``tokens/s with channel / tokens/s without`` with its spread, beside the share of each channel run spent
inside the logits processor (measured by the processor itself: the overhead without the machine's noise).
Each channel run gets a fresh keyring (its green-list rows are computed during the run, not carried over
from an earlier one) and every batch row a different account, so each row carries two keys (provider and
account): the cost a server pays for new contexts, not a warmed cache's.

    python -m tracemark.experiments.channel_overhead            # embedded model, fp32, CPU
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tracemark.foundation.channel import ChannelKey, ChannelSpec, Keyring
from tracemark.foundation.models.embedded import ensure_embedded_model
from tracemark.foundation.problems import generate_problems
from tracemark.server.teacher.base import GenerationParams
from tracemark.server.teacher.local import LocalTeacher


@dataclass
class OverheadResult:
    model: str
    batch: int
    new_tokens: int
    threads: int
    spec: dict
    plain_tokens_per_s: list[float] = field(default_factory=list)
    channel_tokens_per_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    processor_shares: list[float] = field(default_factory=list)  # logits-processor time / channel run time

    @property
    def ratio(self) -> float:
        """Median of the per-repetition ratios (channel / plain tokens/s)."""
        return statistics.median(self.ratios)

    @property
    def overhead(self) -> float:
        """``1 - ratio``: the share of throughput the channel costs."""
        return 1.0 - self.ratio

    def summary(self) -> dict:
        return {
            **asdict(self),
            "ratio_median": self.ratio,
            "ratio_min": min(self.ratios),
            "ratio_max": max(self.ratios),
            "ratio_stdev": statistics.stdev(self.ratios) if len(self.ratios) > 1 else 0.0,
            "overhead": self.overhead,
            "processor_share_median": statistics.median(self.processor_shares),
        }


def _fresh_keyring(spec: ChannelSpec) -> Keyring:
    """Random keys (a benchmark needs no master secret); the cost does not depend on their values."""

    def account_key(name: str) -> ChannelKey:
        return ChannelKey(secrets.token_bytes(32), "account", name)

    return Keyring(spec, ChannelKey(secrets.token_bytes(32), "provider"), account_key)


def _run(teacher: LocalTeacher, conversations, params, spec: ChannelSpec | None) -> tuple[float, float]:
    """(tokens/s, share of the run spent in the channel's logits processor)."""
    channels = None
    if spec is not None:
        keyring = _fresh_keyring(spec)
        channels = [keyring.lists_for(f"account-{i}") for i in range(len(conversations))]
    before = teacher.channel_seconds
    start = time.perf_counter()
    out = teacher.generate_batch(conversations, params, channels=channels)
    seconds = time.perf_counter() - start
    return sum(g.completion_tokens for g in out) / seconds, (teacher.channel_seconds - before) / seconds


def measure_channel_overhead(
    model_path: str | Path | None = None,
    *,
    batch: int = 8,
    new_tokens: int = 64,
    repetitions: int = 3,
    threads: int = 1,
    spec: ChannelSpec | None = None,
) -> OverheadResult:
    """Tokens/s of ``LocalTeacher.generate_batch`` (fp32, CPU, greedy) with and without the channel,
    interleaved, ``repetitions`` times after one warm-up of each (``model_path``: the embedded model)."""
    if repetitions < 1 or batch < 1 or new_tokens < 1:
        raise ValueError("batch, new_tokens and repetitions must be positive")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(model_path, batch, new_tokens, repetitions, threads, spec)
    finally:
        torch.set_num_threads(before)


def _measure(model_path, batch, new_tokens, repetitions, threads, spec) -> OverheadResult:
    path = Path(model_path) if model_path is not None else ensure_embedded_model()
    teacher = LocalTeacher(path, quantization="none", device="cpu", max_batch_size=batch)
    spec = teacher.configure_channel(spec or ChannelSpec())
    conversations = [
        [{"role": "user", "content": p.question}] for p in generate_problems(batch, seed=20261202)
    ]
    params = GenerationParams(max_new_tokens=new_tokens)
    result = OverheadResult(
        model=str(path), batch=batch, new_tokens=new_tokens, threads=threads, spec=spec.as_dict()
    )
    _run(teacher, conversations, params, None)  # warm-up: allocator, kernels, tokenizer
    _run(teacher, conversations, params, spec)
    for rep in range(repetitions):
        order = [None, spec] if rep % 2 == 0 else [spec, None]
        runs = {id(s): _run(teacher, conversations, params, s) for s in order}
        (plain, _), (channel, share) = runs[id(None)], runs[id(spec)]
        result.plain_tokens_per_s.append(plain)
        result.channel_tokens_per_s.append(channel)
        result.ratios.append(channel / plain)
        result.processor_shares.append(share)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = measure_channel_overhead(
        args.model,
        batch=args.batch,
        new_tokens=args.new_tokens,
        repetitions=args.repetitions,
        threads=args.threads,
    )
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
