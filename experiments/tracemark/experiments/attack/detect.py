"""Distil a student from a (possibly attacked) harvest and test it: the pair channel through the server's
investigation, the distributional channel from texts sampled from the student (radioactivity-style,
black-box and white-box evidence from :mod:`tracemark.forensics.channel.detect`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tracemark.experiments.distill import distill_student, save_student
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.channel.detect import blackbox_evidence, sample_completions, whitebox_evidence
from tracemark.forensics.channel.score import ChannelTest, score_tuples
from tracemark.foundation.channel import ChannelSpec, tokenizer_fingerprint
from tracemark.foundation.models.tiny import build_tiny_model
from transformers import AutoTokenizer


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
    tokenizer = None
    if size.tokenizer != "char":
        tokenizer = AutoTokenizer.from_pretrained(size.tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return build_tiny_model(
        directory,
        hidden_size=size.hidden,
        layers=size.layers,
        max_positions=max(1024, size.max_length + size.sample_tokens),
        seed=seed,
        tokenizer=tokenizer,
    )


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


def student_evidence(
    student: Path,
    prompts: Sequence[str],
    size: StudentSize,
    *,
    spec: ChannelSpec,
    tokenizer: Any,
    beacon: str,
) -> tuple[list[str], dict[str, Any]]:
    """The student's sampled completions of ``prompts`` and the channel evidence they give: black-box
    (re-tokenized with the channel ``tokenizer``) always, white-box (argmax over prompt + own completion)
    when the student decodes over the channel's vocabulary (the forensics code path of the investigation)."""
    suspect = parse_suspect(f"hf:{student}", device="cpu")
    texts = sample_completions(
        suspect, prompts, max_new_tokens=size.sample_tokens, temperature=size.temperature, beacon=beacon
    )
    evidence = {"black-box": blackbox_evidence(texts, spec=spec, tokenizer=tokenizer, prompts=prompts)}
    if tokenizer_fingerprint(suspect.tokenizer) == spec.tokenizer:
        joined = [p + t for p, t in zip(prompts, texts, strict=True)]
        evidence["white-box"] = whitebox_evidence(suspect, joined, spec=spec, prompts=prompts)
    return texts, evidence


@dataclass
class ChannelVerdict:
    """The distributional channel's tests of one student (one evidence mode): provider key, every account
    key, the attribution (smallest Bonferroni-adjusted account p)."""

    mode: str
    tuples: int
    provider: dict
    accounts: dict[str, dict] = field(default_factory=dict)
    attributed: str = ""
    attributed_p: float = 1.0  # Bonferroni-adjusted over the accounts tested
    harvester_p: float | None = None  # the best adjusted p among the accounts that harvested

    def as_dict(self) -> dict:
        data = asdict(self)
        best = sorted(self.accounts.items(), key=lambda kv: kv[1]["p_value"])[:5]
        data["accounts"] = dict(best)
        return data


def channel_verdict(
    tuples: Any,
    *,
    mode: str,
    spec: ChannelSpec,
    provider_key: Any,
    account_keys: dict[str, Any],
    harvesters: Sequence[str] = (),
) -> ChannelVerdict:
    """Exact binomial tests of the distinct ``tuples`` under the provider key and every account key."""
    provider: ChannelTest = score_tuples(tuples, key=provider_key, spec=spec)
    tests = {a: score_tuples(tuples, key=k, spec=spec).as_dict() for a, k in account_keys.items()}
    m = max(1, len(tests))
    verdict = ChannelVerdict(mode=mode, tuples=len(tuples), provider=provider.as_dict(), accounts=tests)
    if tests:
        best = min(tests, key=lambda a: tests[a]["p_value"])
        verdict.attributed = best
        verdict.attributed_p = min(1.0, tests[best]["p_value"] * m)
        own = [min(1.0, tests[a]["p_value"] * m) for a in harvesters if a in tests]
        if own:
            verdict.harvester_p = min(own)
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
        try:
            for event in stubs.forensics.Investigate(request, timeout=1800):
                if event.HasField("result"):
                    final = event.result
                elif progress is not None:
                    progress(event.progress.stage)
        except grpc.RpcError as exc:  # one refused investigation must not end the campaign
            details = (exc.details() or "").splitlines()[:1]
            return {
                "p_value": 1.0,
                "verdict": "error",
                "attributed": "",
                "error": f"{exc.code().name}: {details}",
            }
    finally:
        stubs.close()
    if final is None:
        return {"p_value": 1.0, "verdict": "none", "attributed": ""}
    names = {1: "detected", 2: "not_detected", 3: "inconclusive"}
    accounts = sorted(final.accounts, key=lambda a: a.p_value)
    pair_only = [a.pair_p_value if a.channel_tested else a.p_value for a in final.accounts]
    return {
        "p_value": _p(final.p_value),
        "verdict": names.get(final.verdict, "unknown"),
        "attributed": final.attributed_account,
        "report_id": final.report_id,
        # the pair channel alone: the smallest per-account pair p (unadjusted; the verdict's p combines
        # it with the account's channel p when the investigation tested the channel)
        "pair_only_p": _p(min(pair_only)) if pair_only else 1.0,
        "provider_tested": bool(final.provider_tested),
        "distilled_from_us": bool(final.distilled_from_us),
        "provider_p": _p(final.provider_p_value) if final.provider_tested else None,
        "provider_adjusted_p": _p(final.provider_adjusted_p_value) if final.provider_tested else None,
        "accounts": [
            {
                "account": a.account,
                "p": _p(a.p_value),
                "adjusted_p": _p(a.adjusted_p_value),
                "rejected": bool(a.rejected),
                "channel_p": _p(a.channel_p_value) if a.channel_tested else None,
                "pair_p": _p(a.pair_p_value) if a.channel_tested else _p(a.p_value),
            }
            for a in accounts[:3]
        ],
    }


def _p(value: float) -> float:
    return 1.0 if math.isnan(value) else float(value)
