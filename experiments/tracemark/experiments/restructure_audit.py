"""Audit a model-free rewriter (``restructure``, ``restructure-stealth``) on GSM8K solutions.

For every solution of a fixed slice of a GSM8K ``train.jsonl`` it measures the rewriter's own output and
what the rewrite pipeline delivers with the intermediate-result guard (retry, then fall back to the input):
answers preserved, traces keeping every intermediate result, false equations introduced, doubled words,
lines ending in a dangling operator and decimals glued to an operator (``x.01``)::

    python -m tracemark.experiments.restructure_audit --data train.jsonl --start 6000 --limit 1319

The issue's evaluation holds out a different part of the train split; this audit uses lines 6000 on.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracemark.experiments.countermeasures import apply_countermeasure, invert_restructure, plain_form
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.builtin.restructure import RestructureRewriter
from tracemark.plugins.builtin.restructure_stealth import StealthRestructureRewriter
from tracemark.plugins.equations import check_rewrite, extract_equations
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline

REWRITERS = {"restructure": RestructureRewriter, "restructure-stealth": StealthRestructureRewriter}
_DOUBLED = re.compile(r"\b([A-Za-z]{2,})\s+\1\b", re.IGNORECASE)
_DANGLING = re.compile(r"(?:[+\-*/×÷·^=⟸]|\d\s+[xX]|:=)\s*$")
_GLUED = re.compile(r"(?:\s[xX×*+/÷-]|=|⟸)\.\d")  # a spaced operator glued to a decimal: "5 x.01 =.05"
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_PLAIN = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)%?")
_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\s+▹\s+|\n")


class AuditInputError(ValueError):
    """The data file or the slice is unusable (one-line message)."""


def load_solutions(path: Path, start: int, limit: int) -> list[tuple[str, str]]:
    """``(question, answer)`` of lines ``start`` .. ``start + limit - 1`` of a GSM8K jsonl file."""
    if start < 0 or limit < 1:
        raise AuditInputError("--start must be >= 0 and --limit >= 1")
    if not path.is_file():
        raise AuditInputError(f"no such data file: {path}")
    rows: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number < start:
                continue
            if len(rows) >= limit:
                break
            try:
                row = json.loads(line)
                rows.append((str(row["question"]), str(row["answer"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise AuditInputError(f"{path}:{number + 1}: not a GSM8K row (question/answer)") from None
    if not rows:
        raise AuditInputError(f"{path} has no lines from index {start}")
    return rows


def _count(pattern: re.Pattern[str], text: str) -> int:
    return len(pattern.findall(text))


def _result_not_first(text: str) -> bool:
    """A result-first notation with a derivation in front of a plain number: ``(1) 48/2 ⟸ 24``."""
    for equation in extract_equations(text):
        if "⟸" not in equation.text and ":=" not in equation.text:
            continue  # a premise kept as written
        first, *rest = equation.sides
        if not _PLAIN.fullmatch(first) and any(_PLAIN.fullmatch(side) for side in rest):
            return True
    return False


def _dangling(text: str) -> int:
    parts = (part.rstrip(" .") for part in _SENTENCE_END.split(text))
    return sum(1 for part in parts if part and _DANGLING.search(part))


@dataclass
class Tally:
    """Per-trace defect counts of one set of outputs."""

    traces: int = 0
    answers_preserved: int = 0
    all_results_kept: int = 0
    false_equations: int = 0
    traces_with_false_equation: int = 0
    doubled_words: int = 0
    dangling_operators: int = 0
    glued_decimals: int = 0
    result_not_first: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, source: str, output: str, *, keep_examples: int = 3) -> None:
        self.traces += 1
        self.answers_preserved += answers_match(extract_final_answer(source), extract_final_answer(output))
        check = check_rewrite(source, output)
        self.all_results_kept += not check.missing
        self.false_equations += len(check.false)
        self.traces_with_false_equation += bool(check.false)
        visible = _ANNOTATION.sub(" ", source)
        defects = {
            "doubled_words": _count(_DOUBLED, output) > _count(_DOUBLED, visible),
            "dangling_operators": _dangling(output) > _dangling(visible),
            "glued_decimals": _count(_GLUED, output) > _count(_GLUED, visible),
            "result_not_first": _result_not_first(output),
            "false_equations": bool(check.false),
            "results_lost": bool(check.missing),
        }
        for name, hit in defects.items():
            if not hit:
                continue
            if hasattr(self, name):
                setattr(self, name, getattr(self, name) + (0 if name == "false_equations" else 1))
            shown = self.examples.setdefault(name, [])
            if len(shown) < keep_examples:
                shown.append(f"{check.detail() or ''} | {output[:300]}")

    def summary(self) -> dict[str, Any]:
        n = max(self.traces, 1)
        return {
            "traces": self.traces,
            "answers_preserved": self.answers_preserved,
            "all_results_kept": self.all_results_kept,
            "all_results_kept_pct": round(100.0 * self.all_results_kept / n, 2),
            "false_equations": self.false_equations,
            "traces_with_false_equation": self.traces_with_false_equation,
            "doubled_words": self.doubled_words,
            "dangling_operators": self.dangling_operators,
            "glued_decimals": self.glued_decimals,
            "result_not_first": self.result_not_first,
            "examples": self.examples,
        }


def audit(
    solutions: Sequence[tuple[str, str]], rewriter: str = "restructure", *, seed: int = 0, auc: bool = False
) -> dict[str, Any]:
    """Run ``rewriter`` alone (``raw``) and through a guarded pipeline (``guarded``) on every solution."""
    if rewriter not in REWRITERS:
        raise AuditInputError(f"unknown rewriter {rewriter!r} (one of {', '.join(REWRITERS)})")
    cls = REWRITERS[rewriter]
    pipeline = RewritePipeline(RewriterRegistry.from_classes(cls), timeout_s=30.0, retries=1)
    instance = cls()
    raw, guarded = Tally(), Tally()
    fell_back = inverted_plain = cleaned_plain = source_plain = 0
    delivered: list[str] = []
    started = time.perf_counter()
    for index, (question, answer) in enumerate(solutions):
        trace_id = f"audit-{seed}-{index}"
        alone = RewriteContext(problem=question, trace_id=trace_id, rng=random.Random(f"raw|{seed}|{index}"))
        output = instance.rewrite(answer, alone)
        raw.add(answer, output)
        source_plain += plain_form(answer)
        inverted_plain += plain_form(invert_restructure(output))
        cleaned_plain += plain_form(apply_countermeasure("all", output))
        context = RewriteContext(problem=question, trace_id=trace_id, rng=random.Random(f"{seed}|{index}"))
        result = pipeline.run(answer, names=[rewriter], context=context)
        delivered.append(result.trace)
        fell_back += result.steps[0].fell_back
        guarded.add(answer, result.trace)
    seconds = time.perf_counter() - started
    extra: dict[str, Any] = {}
    if auc:
        # the sources as a reader sees them: calculator annotations would give every source away
        sources = [_ANNOTATION.sub("", answer) for _, answer in solutions]
        extra["ngram_auc"] = round(ngram_auc(sources, delivered, seed=seed), 4)
    return {
        **extra,
        "rewriter": rewriter,
        "raw": raw.summary(),
        "guarded": {**guarded.summary(), "fell_back": fell_back},
        # the adaptive distiller's invert_restructure: traces whose equations all read "a op b = c" again
        "countermeasure": {
            "inverted_plain_form": inverted_plain,
            "all_plain_form": cleaned_plain,
            "source_plain_form": source_plain,
        },
        "seconds": round(seconds, 2),
        "ms_per_trace": round(1000.0 * seconds / max(len(solutions), 1), 3),
    }


def _ngram_features(texts: Sequence[str], dims: int, orders: tuple[int, ...]) -> Any:
    import numpy as np  # noqa: PLC0415 - only the --auc check needs numpy

    features = np.zeros((len(texts), dims), dtype=np.float32)
    for row, text in enumerate(texts):
        for n in orders:
            for i in range(len(text) - n + 1):
                features[row, zlib.crc32(text[i : i + n].encode()) % dims] += 1.0
    features = np.log1p(features)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-9)


def ngram_auc(
    originals: Sequence[str], rewritten: Sequence[str], *, seed: int = 0, dims: int = 4096, steps: int = 300
) -> float:
    """Held-out AUC of a character 1-3-gram logistic regression telling ``rewritten`` from ``originals``
    (pairs split together: half of the problems train it, the other half score it; 0.5 = undetectable)."""
    import numpy as np  # noqa: PLC0415

    if len(originals) != len(rewritten) or len(originals) < 4:
        raise AuditInputError("ngram_auc needs >= 4 pairs of traces")
    order = random.Random(seed).sample(range(len(originals)), len(originals))
    half = set(order[: len(order) // 2])
    x = _ngram_features([*originals, *rewritten], dims, (1, 2, 3))
    y = np.array([0.0] * len(originals) + [1.0] * len(rewritten))
    train = np.array([(i % len(originals)) in half for i in range(len(y))])
    weights, bias = np.zeros(dims), 0.0
    for _ in range(steps):  # full-batch gradient descent, L2 1e-3
        p = 1.0 / (1.0 + np.exp(-(x[train] @ weights + bias)))
        weights -= 2.0 * (x[train].T @ (p - y[train]) / train.sum() + 1e-3 * weights)
        bias -= 2.0 * float(np.mean(p - y[train]))
    scores, labels = x[~train] @ weights, y[~train]
    ranks = np.argsort(np.argsort(scores)) + 1.0
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _print(report: dict[str, Any]) -> None:
    traces, per = report["raw"]["traces"], report["ms_per_trace"]
    print(f"rewriter {report['rewriter']}: {traces} traces, {per} ms/trace")
    keys = ("answers_preserved", "all_results_kept", "all_results_kept_pct", "false_equations",
            "traces_with_false_equation", "doubled_words", "dangling_operators", "glued_decimals",
            "result_not_first")
    print(f"{'':30} {'rewriter alone':>15} {'guarded pipeline':>17}")
    for key in keys:
        print(f"{key:30} {report['raw'][key]!s:>15} {report['guarded'][key]!s:>17}")
    print(f"{'fell back (guard)':30} {'':>15} {report['guarded']['fell_back']!s:>17}")
    if "ngram_auc" in report:
        auc = report["ngram_auc"]
        print(f"char 1-3-gram logistic regression, held-out AUC (output vs annotation-free source): {auc}")
    inverted = report["countermeasure"]
    print(
        f"invert_restructure: {inverted['inverted_plain_form']}/{traces} traces read 'a op b = c' again "
        f"(sources: {inverted['source_plain_form']}/{traces}); countermeasure 'all': "
        f"{inverted['all_plain_form']}/{traces}"
    )


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracemark.experiments.restructure_audit",
        description="Audit restructure (or restructure-stealth) and the intermediate-result guard on GSM8K.",
    )
    parser.add_argument("--data", type=Path, required=True, help="GSM8K train.jsonl (question/answer rows)")
    parser.add_argument("--start", type=int, default=6000, help="first line index (default 6000)")
    parser.add_argument("--limit", type=int, default=1319, help="number of lines (default 1319)")
    parser.add_argument("--rewriter", default="restructure", help=f"one of {', '.join(REWRITERS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-trace contexts")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--auc", action="store_true", help="also the held-out AUC of a char n-gram classifier (needs numpy)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        solutions = load_solutions(args.data, args.start, args.limit)
        report = audit(solutions, args.rewriter, seed=args.seed, auc=args.auc)
    except AuditInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["data"] = {"path": str(args.data), "start": args.start, "limit": args.limit}
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
