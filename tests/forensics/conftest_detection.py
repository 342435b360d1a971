"""Shared helpers of the detection tests (imported explicitly): procedural traces, watermark weaving with
the real template, and a tiny student distilled in the test."""

from __future__ import annotations

import random
from pathlib import Path

DISTILLER = "distiller"


def arithmetic_examples(n: int, *, seed: int = 0, hard: bool = False) -> list[tuple[str, str]]:
    """``n`` (problem, trace) pairs: two-step integer arithmetic with a GSM8K-style final line (single-digit
    operands unless ``hard``, so a tiny model learns the traces quickly)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if hard:
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 50)
        else:
            a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        op = rng.choice("+-")
        s = a + b
        r = s + c if op == "+" else s - c
        question = f"Compute {a} + {b} {op} {c}."
        trace = f"{a} + {b} = {s}\n{s} {op} {c} = {r}\n#### {r}"
        out.append((question, trace))
    return out


def watermark_examples(
    examples: list[tuple[str, str]], pairs: list, *, fraction: float = 0.1, seed: int = 0
) -> tuple[list[tuple[str, str]], int]:
    """Weave the pairs (round-robin, equal exposure) into ``fraction`` of the traces with the watermark
    rewriter's own template; return (examples, number of woven traces)."""
    from tracemark.plugins.builtin.watermark import weave_template

    rng = random.Random(seed)
    k = round(fraction * len(examples))
    chosen = set(rng.sample(range(len(examples)), k))
    out = []
    j = 0
    for i, (q, t) in enumerate(examples):
        if i in chosen:
            pair = pairs[j % len(pairs)]
            t = weave_template(t, pair.text, variant=j // len(pairs))
            j += 1
        out.append((q, t))
    return out, k


def train_student(
    base: Path, examples: list[tuple[str, str]], out: Path, *, epochs: float, lr: float = 3e-3, seed: int = 0
) -> Path:
    """Full fine-tuning of the tiny base model on ``examples`` (tracemark.experiments.distill); saved to ``out``."""
    from tracemark.experiments.distill import distill_student, save_student

    model, tok = distill_student(
        base, examples, method="full", epochs=epochs, lr=lr, batch_size=16, max_length=96, seed=seed
    )
    return save_student(model, tok, out)
