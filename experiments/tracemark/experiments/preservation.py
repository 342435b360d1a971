"""Measure answer preservation of a rewriter pipeline on reference traces (e.g. GSM8K solutions).

For each trace the pipeline runs with its answer guard; the report says how often each step's rewrite
kept the answer on its own (first attempt, or after a guard retry), how often the guard had to fall back
(answer changed every time, error, time-out) and whether the final trace kept the answer.

Command line (prints a JSON report)::

    tracemark bench preservation --gsm8k ../shared/data/gsm8k/train.jsonl --n 200 \\
        --rewriters restructure,watermark --options '{"watermark": {"fraction": 1, "mode": "template"}}'
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.foundation.errors import InvalidInput
from tracemark.plugins.api import RewriteContext, SignatureService
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline
from tracemark.server.batching import GenerationQueue
from tracemark.server.config import TeacherSection
from tracemark.server.llm import QueuedLLM
from tracemark.server.teacher.factory import build_teacher

__all__ = [
    "LLM_KINDS",
    "PreservationReport",
    "StepStats",
    "load_gsm8k",
    "measure_preservation",
    "prepare_gsm8k",
    "rewriting_llm",
    "scratch_issuer",
]

LLM_KINDS = ("none", "embedded", "tiny")


@dataclass
class StepStats:
    """Guard outcomes of one pipeline step over all traces."""

    outcomes: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    seconds: float = 0.0

    def rate(self, *guards: str, n: int) -> float:
        return sum(self.outcomes.get(g, 0) for g in guards) / n if n else 0.0


@dataclass
class PreservationReport:
    n: int
    answer_preserved: int
    seconds: float
    steps: dict[str, StepStats]
    failures: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Rates per step: kept by the rewrite itself, kept after a retry, guard fell back."""
        out: dict[str, Any] = {
            "n": self.n,
            "final_answer_preserved": self.answer_preserved,
            "final_answer_preserved_rate": self.answer_preserved / self.n if self.n else 0.0,
            "seconds": round(self.seconds, 3),
            "steps": {},
        }
        for name, stats in self.steps.items():
            out["steps"][name] = {
                "outcomes": dict(sorted(stats.outcomes.items())),
                "kept_first_try_rate": stats.rate("preserved", "no_answer", n=self.n),
                "kept_after_retry_rate": stats.rate("preserved_after_retry", n=self.n),
                "fell_back_rate": stats.rate("fell_back", "error", "timeout", "skipped", n=self.n),
                "mean_attempts": stats.attempts / self.n if self.n else 0.0,
                "mean_seconds": stats.seconds / self.n if self.n else 0.0,
            }
        return out


def measure_preservation(
    pipeline: RewritePipeline,
    items: Sequence[tuple[str, str]],
    names: Sequence[str],
    *,
    options: dict[str, dict] | None = None,
    account: str | None = None,
    signatures: SignatureService | None = None,
    llm: Any = None,
    workers: int = 1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> PreservationReport:
    """Run ``names`` over ``items`` = ``(problem, trace)`` pairs and tally the guard outcomes."""
    pipeline.prepare(names, options)
    done = 0

    def one(i: int):
        nonlocal done
        problem, trace = items[i]
        context = RewriteContext(
            problem=problem,
            account=account,
            trace_id=f"measure-{seed}-{i}",
            rng=random.Random(seed * 1_000_003 + i),
            llm=llm,
            signatures=signatures,
        )
        result = pipeline.run(trace, names=list(names), options=options, context=context)
        done += 1
        if progress is not None:
            progress(done, len(items))
        return i, result

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(one, range(len(items))))
    steps: dict[str, StepStats] = {}
    preserved = 0
    failures = []
    outputs = []
    for i, result in results:
        outputs.append(
            {
                "index": i,
                "trace": result.trace,
                "original_answer": result.original_answer,
                "final_answer": result.final_answer,
                "steps": [asdict(step) for step in result.steps],
            }
        )
        preserved += result.answer_preserved
        if not result.answer_preserved:
            failures.append({"index": i, "original": result.original_answer, "final": result.final_answer})
        for step in result.steps:
            stats = steps.setdefault(step.name, StepStats())
            stats.outcomes = dict(Counter(stats.outcomes) + Counter({step.guard: 1}))
            stats.attempts += step.attempts
            stats.seconds += step.seconds
    return PreservationReport(len(items), preserved, time.perf_counter() - start, steps, failures, outputs)


def load_gsm8k(path: Path, n: int | None) -> list[tuple[str, str]]:
    """``(question, reference solution)`` pairs from a GSM8K jsonl file (first ``n``)."""
    items = []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        items.append((row["question"], row["answer"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise InvalidInput(
                            f"{path} line {number} is not a GSM8K row (JSON with question and answer)"
                        ) from None
                if n is not None and len(items) >= n:
                    break
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path} ({type(exc).__name__})") from None
    if not items:
        raise InvalidInput(f"{path} holds no GSM8K rows")
    return items


def scratch_issuer(folder: Path, pairs_per_account: int = 2) -> SignatureIssuer:
    """A real signature issuer with a fresh master secret and SQLite ledger in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    master = MasterSecret.load(path=folder / "master.key")
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    return SignatureIssuer(master=master, engine=engine, pairs_per_account=pairs_per_account)


def rewriting_llm(kind: str, *, quantization: str = "none", timeout_s: float = 600.0) -> Any:
    """The LLM the rewriters may call: ``None`` for ``none``, else the embedded or tiny model on the CPU
    behind a batching queue (concurrent rewrites batch together)."""
    if kind == "none":
        return None
    if kind not in LLM_KINDS:
        raise InvalidInput(f"the LLM must be one of {', '.join(LLM_KINDS)}, got {kind!r}")
    teacher = build_teacher(
        TeacherSection(backend=kind, quantization=quantization, device="cpu", max_batch_size=8)
    )
    queue = GenerationQueue(teacher, max_batch=8, window_s=0.05, max_queue=512)
    return QueuedLLM(queue, teacher.info.model_id, timeout_s=timeout_s)


def prepare_gsm8k(
    gsm8k: Path,
    names: Sequence[str],
    *,
    n: int | None = None,
    options: dict[str, dict] | None = None,
    timeout_s: float = 600.0,
    retries: int = 1,
) -> tuple[RewritePipeline, list[tuple[str, str]]]:
    """The pipeline of the installed rewriters ``names`` (options checked) and the first ``n`` GSM8K
    pairs of ``gsm8k``: the inputs of :func:`measure_preservation`, checked before any model loads."""
    pipeline = RewritePipeline(RewriterRegistry.discover(strict=False), timeout_s=timeout_s, retries=retries)
    pipeline.prepare(names, options)  # unknown rewriter or bad options
    return pipeline, load_gsm8k(gsm8k, n)
