"""Measure answer preservation of a rewriter pipeline on reference traces (e.g. GSM8K solutions).

For each trace the pipeline runs with its answer guard; the report says how often each step's rewrite
kept the answer on its own (first attempt, or after a guard retry), how often the guard had to fall back
(answer changed every time, error, time-out) and whether the final trace kept the answer.

Command line (prints a JSON report)::

    python -m tracemark.experiments.preservation --gsm8k ../shared/data/gsm8k/train.jsonl --n 200 \\
        --rewriters restructure,watermark --options '{"watermark": {"fraction": 1, "mode": "template"}}'
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracemark.plugins.api import RewriteContext, SignatureService
from tracemark.plugins.pipeline import RewritePipeline


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
    with path.open() as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                items.append((row["question"], row["answer"]))
            if n is not None and len(items) >= n:
                break
    return items


def scratch_issuer(folder: Path, pairs_per_account: int = 2) -> Any:
    """A real signature issuer with a fresh master secret and SQLite ledger in ``folder``."""
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine

    folder.mkdir(parents=True, exist_ok=True)
    master = MasterSecret.load(path=folder / "master.key")
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    return SignatureIssuer(master=master, engine=engine, pairs_per_account=pairs_per_account)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Answer preservation of a rewriter pipeline on GSM8K solutions.")
    ap.add_argument("--gsm8k", type=Path, required=True, help="GSM8K jsonl (question/answer)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rewriters", default="restructure,watermark")
    ap.add_argument("--options", default="{}", help='JSON {"name": {...}}')
    ap.add_argument("--account", default="measure-account", help="account for the watermark ('' = anonymous)")
    ap.add_argument("--llm", default="none", choices=["none", "embedded", "tiny"])
    ap.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"])
    ap.add_argument(
        "--workers", type=int, default=1, help="concurrent pipeline runs (LLM calls batch together)"
    )
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--dump", type=Path, default=None, help="write every result (trace, steps) to this jsonl")
    args = ap.parse_args(argv)

    from tracemark.plugins.loader import RewriterRegistry

    names = [n.strip() for n in args.rewriters.split(",") if n.strip()]
    pipeline = RewritePipeline(
        RewriterRegistry.discover(strict=False), timeout_s=args.timeout, retries=args.retries
    )
    llm = None
    if args.llm != "none":
        from tracemark.server.batching import GenerationQueue
        from tracemark.server.config import TeacherSection
        from tracemark.server.llm import QueuedLLM
        from tracemark.server.teacher.factory import build_teacher

        teacher = build_teacher(
            TeacherSection(backend=args.llm, quantization=args.quantization, device="cpu", max_batch_size=8)
        )
        queue = GenerationQueue(teacher, max_batch=8, window_s=0.05, max_queue=512)
        llm = QueuedLLM(queue, teacher.info.model_id, timeout_s=args.timeout)
    items = load_gsm8k(args.gsm8k, args.n)

    def progress(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            print(f"{done}/{total}", file=sys.stderr, flush=True)

    report = measure_preservation(
        pipeline,
        items,
        names,
        options=json.loads(args.options),
        account=args.account or None,
        signatures=scratch_issuer(Path(tempfile.mkdtemp(prefix="tm-measure-"))),
        llm=llm,
        workers=args.workers,
        progress=progress,
    )
    if args.dump is not None:
        with args.dump.open("w") as fh:
            for row in report.outputs:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = report.summary()
    summary["failures"] = report.failures[:20]
    summary["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(json.dumps(summary, indent=2))
    return 0


__all__ = [
    "PreservationReport",
    "StepStats",
    "asdict",
    "load_gsm8k",
    "main",
    "measure_preservation",
    "scratch_issuer",
]

if __name__ == "__main__":
    raise SystemExit(main())
