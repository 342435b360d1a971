"""Distil a student from a (possibly attacked) harvest and test it: the pair channel through the server's
investigation, the distributional channel from texts sampled from the student (radioactivity-style,
black-box: :func:`tracemark.forensics.channel.score.score_texts`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tracemark.experiments.distill import distill_student, load_student, prompt_ids, save_student
from tracemark.forensics.channel.score import ChannelTest, score_texts
from tracemark.foundation.channel import ChannelSpec


@dataclass(frozen=True)
class StudentSize:
    """A demo-scale student: a small random Llama over ``tokenizer`` (``"char"``: the tiny character
    tokenizer; else a model folder whose tokenizer is used, e.g. the channel's vocabulary)."""

    tokenizer: str = "char"
    hidden: int = 128
    layers: int = 2
    epochs: float = 4
    lr: float = 5e-3
    batch_size: int = 4
    max_length: int = 320
    samples: int = 64  # prompts sampled for the channel test
    sample_tokens: int = 160
    temperature: float = 1.0


def build_student_base(directory: Path, size: StudentSize, *, seed: int = 0) -> Path:
    """A fresh random small Llama (tied embeddings) with ``size.tokenizer``'s vocabulary."""
    directory = Path(directory)
    if size.tokenizer == "char":
        from tracemark.foundation.models.tiny import build_tiny_model  # deferred: as below

        return build_tiny_model(directory, hidden_size=size.hidden, layers=size.layers, seed=seed)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(size.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 2,
        num_hidden_layers=size.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(1024, size.max_length + size.sample_tokens),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_student(
    base: Path, examples: Sequence[tuple[str, str]], out: Path, size: StudentSize, *, seed: int = 0
) -> Path:
    """Full fine-tuning of ``base`` on (prompt, trace) examples; the saved student's folder."""
    model, tokenizer = distill_student(
        base,
        list(examples),
        method="full",
        epochs=size.epochs,
        lr=size.lr,
        batch_size=size.batch_size,
        max_length=size.max_length,
        seed=seed,
    )
    return save_student(model, tokenizer, out)


def sample_texts(student: Path, prompts: Sequence[str], size: StudentSize, *, seed: int = 0) -> list[str]:
    """Completions sampled from ``student`` for ``prompts`` (chat template when it has one)."""
    model, tokenizer = load_student(student)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    texts = []
    batch = 8
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(prompts), batch):
        rows = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=size.temperature,
                top_k=0,
                max_new_tokens=size.sample_tokens,
                pad_token_id=pad,
            )
        texts.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    return texts


@dataclass
class ChannelVerdict:
    """The distributional channel's tests of one student: provider key, and every account key."""

    provider: dict
    accounts: dict[str, dict] = field(default_factory=dict)
    attributed: str = ""
    attributed_p: float = 1.0  # Bonferroni-adjusted over the accounts tested
    expected_account_p: float | None = None  # the harvesting account's own (adjusted) p when it is one

    def as_dict(self) -> dict:
        data = asdict(self)
        data["accounts"] = {
            a: t for a, t in sorted(self.accounts.items(), key=lambda kv: kv[1]["p_value"])[:5]
        }
        return data


def channel_verdict(
    texts: Sequence[str],
    *,
    spec: ChannelSpec,
    tokenizer: Any,
    provider_key,
    account_keys: dict[str, Any],
    harvesters: Sequence[str] = (),
) -> ChannelVerdict:
    """Score ``texts`` under the provider key and every account key; attribute to the smallest
    Bonferroni-adjusted account p. ``harvesters`` (when one account harvested) gives its own p."""
    provider: ChannelTest = score_texts(texts, key=provider_key, spec=spec, tokenizer=tokenizer)
    tests = {
        a: score_texts(texts, key=k, spec=spec, tokenizer=tokenizer).as_dict()
        for a, k in account_keys.items()
    }
    m = max(1, len(tests))
    verdict = ChannelVerdict(provider=provider.as_dict(), accounts=tests)
    if tests:
        best = min(tests, key=lambda a: tests[a]["p_value"])
        verdict.attributed = best
        verdict.attributed_p = min(1.0, tests[best]["p_value"] * m)
        own = [min(1.0, tests[a]["p_value"] * m) for a in harvesters if a in tests]
        if own:
            verdict.expected_account_p = min(own)
    return verdict


def investigate_pairs(
    address: str, token: str, student: Path, *, alpha: float, progress: Callable[[str], None] | None = None
) -> dict:
    """The pair channel's verdict on ``student`` through ``ForensicsService.Investigate`` (white-box)."""
    from tracemark.server.client import Stubs, open_channel  # deferred: gRPC only when investigating
    from tracemark.v1 import forensics_pb2  # deferred: as above

    stubs = Stubs(open_channel(address, token=token))
    try:
        request = forensics_pb2.InvestigateRequest(suspect=f"hf:{student}", alpha=alpha, mode="white-box")
        final = None
        for event in stubs.forensics.Investigate(request, timeout=1800):
            if event.HasField("result"):
                final = event.result
            elif progress is not None:
                progress(event.progress.stage)
    finally:
        stubs.close()
    if final is None:
        return {"p_value": 1.0, "verdict": "none", "attributed": ""}
    names = {1: "detected", 2: "not_detected", 3: "inconclusive"}
    return {
        "p_value": float(final.p_value) if not math.isnan(final.p_value) else 1.0,
        "verdict": names.get(final.verdict, "unknown"),
        "attributed": final.attributed_account,
        "report_id": final.report_id,
    }
