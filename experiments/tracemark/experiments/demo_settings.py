"""Demo sizes: the default run and the --quick run."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoSize:
    train_problems: int
    difficulty: str
    student: str  # "tiny" (trained from scratch) or a model folder
    student_hidden: int
    student_layers: int
    method: str
    epochs: float
    lr: float
    batch_size: int
    max_length: int
    watermark_fraction: float
    pairs_per_account: int
    target_digits: int
    bystanders: int
    alpha: float
    # Traces the distiller also harvests from a replica serving the embedded SmolLM2 teacher, decoded with
    # the distributional channel (provider key + the distiller's key), and their length in new tokens.
    model_traces: int = 48
    model_max_new_tokens: int = 128


DEFAULT = DemoSize(
    train_problems=1200,
    difficulty="easy",
    student="tiny",
    student_hidden=128,
    student_layers=2,
    method="full",
    epochs=4,
    lr=5e-3,
    batch_size=4,
    max_length=320,
    watermark_fraction=0.1,
    pairs_per_account=2,
    target_digits=6,
    bystanders=19,
    alpha=1e-3,
)

# Quick: fewer problems (800 instead of 1,200) at 15% watermarked, so each pair is seen about as often as in
# the default run (~60 traces): at 10% the quick student saw ~37 per pair, which is too few to memorise a
# 6-digit target reliably (one of two runs was censored to p = 1). The rest is the same.
QUICK = replace(DEFAULT, train_problems=800, watermark_fraction=0.15, model_traces=32)
