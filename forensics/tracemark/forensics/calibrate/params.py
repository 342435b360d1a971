"""What a calibration measures: one validated parameters object (:class:`CalibrationParams`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tracemark.forensics.scheme import SchemeError, SignatureScheme
from tracemark.foundation.errors import InvalidInput

LEVELS = (0.001, 0.01, 0.05, 0.1)
"""The significance levels whose false-alarm rates every calibration reports (plus ``alpha``)."""


class CalibrationError(InvalidInput):
    """Bad calibration parameters; ``field`` names the parameter."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class StudentRecipe:
    """How a student null model is made: a tiny model (``hidden_size`` x ``layers``) fully fine-tuned for
    ``epochs`` on ``problems`` easy word problems whose traces carry, in ``fraction`` of them, the pairs of
    ``accounts`` *other* accounts (never one under test), woven in the scheme's public format."""

    accounts: int = 2
    problems: int = 120
    fraction: float = 0.5
    epochs: float = 50
    lr: float = 1e-2
    batch_size: int = 16
    hidden_size: int = 64
    layers: int = 2

    def __post_init__(self) -> None:
        checks = [
            (self.accounts >= 1, "accounts", "must be >= 1"),
            (self.problems >= 4, "problems", "must be >= 4"),
            (0 < self.fraction <= 1, "fraction", "must be in (0, 1]"),
            (self.epochs > 0, "epochs", "must be > 0"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.hidden_size >= 8 and self.layers >= 1, "hidden_size", "must be >= 8 (and layers >= 1)"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise CalibrationError(f"student_{name} {message}", field=f"student_{name}")


def min_runs(alpha: float, conf: float = 0.95) -> int:
    """Fewest runs for which zero false alarms can pass the rule: the one-sided ``conf`` Clopper-Pearson
    upper bound at ``0/n`` (``1 - (1 - conf)^(1/n)``) is ``<= 2 alpha`` (149 runs at alpha = 0.01)."""
    if alpha >= 0.5:
        return 1
    return math.ceil(math.log(1.0 - conf) / math.log(1.0 - 2.0 * alpha))


@dataclass(frozen=True)
class CalibrationParams:
    """What a calibration measures, validated at construction (:class:`CalibrationError`).

    ``runs`` random-key null runs are split evenly over the main null models: ``tiny_models`` tiny random
    models, ``students`` students trained on other accounts' traces (``student``), and any clean white-box
    ``models`` (folders or ``hf:``/``gguf:`` specs). ``embedded`` adds ``embedded_runs`` runs on the
    embedded SmolLM2. ``salient_accounts`` salient-target accounts are built per null model (0: none).
    The scheme under test is the default :class:`SignatureScheme` with ``digits``, ``pairs_per_account``
    and, when given, ``contexts``. ``alpha`` is the level the verdict is about, ``levels`` the others
    reported; ``family_size`` accounts make one family for the Holm / BH version. ``workers`` processes
    score in parallel (1: in this process).
    """

    runs: int = 1000
    tiny_models: int = 4
    students: int = 2
    student: StudentRecipe = field(default_factory=StudentRecipe)
    models: Sequence[str | Path] | None = None
    embedded: bool = False
    embedded_runs: int = 10
    salient_accounts: int = 3
    digits: int = 6
    pairs_per_account: int = 2
    contexts: Sequence[str] | None = None
    alpha: float = 0.01
    levels: Sequence[float] = LEVELS
    family_size: int = 20
    seed: int = 0
    workers: int = 1
    conf: float = 0.95

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise CalibrationError(f"alpha must be in (0, 0.5), got {self.alpha}", field="alpha")
        levels = tuple(sorted({float(x) for x in self.levels} | {float(self.alpha)}))
        if any(not 0 < x < 0.5 for x in levels):
            raise CalibrationError("every level must be in (0, 0.5)", field="levels")
        if self.runs < 2:
            raise CalibrationError(f"runs must be >= 2, got {self.runs}", field="runs")
        if self.tiny_models < 0 or self.students < 0:
            raise CalibrationError("tiny_models and students must be >= 0", field="tiny_models")
        models = tuple(str(m) for m in self.models or ())
        if self.tiny_models + self.students + len(models) < 1:
            raise CalibrationError(
                "no null model: give tiny models, students or --model", field="tiny_models"
            )
        if self.runs < self.tiny_models + self.students + len(models):
            raise CalibrationError("runs must be at least the number of null models", field="runs")
        if self.embedded_runs < 1:
            raise CalibrationError("embedded_runs must be >= 1", field="embedded_runs")
        if self.salient_accounts < 0:
            raise CalibrationError("salient_accounts must be >= 0", field="salient_accounts")
        if self.family_size < 2:
            raise CalibrationError("family_size must be >= 2", field="family_size")
        if self.workers < 1:
            raise CalibrationError(f"workers must be >= 1, got {self.workers}", field="workers")
        if not 0.5 < self.conf < 1:
            raise CalibrationError(f"conf must be in (0.5, 1), got {self.conf}", field="conf")
        self.scheme  # noqa: B018 - validates digits, pairs and contexts now
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "contexts", tuple(self.contexts) if self.contexts else None)

    @property
    def scheme(self) -> SignatureScheme:
        """The signature scheme under test (tm-sig-v2 with its salient set)."""
        try:
            base = SignatureScheme(digits=self.digits, pairs_per_account=self.pairs_per_account)
            return dataclasses.replace(base, contexts=tuple(self.contexts)) if self.contexts else base
        except SchemeError as exc:
            message = str(exc)
            name = next((f for f in ("digits", "pairs_per_account") if message.startswith(f)), "contexts")
            raise CalibrationError(message, field=name) from None

    def split_runs(self, n_models: int) -> list[int]:
        """``runs`` split as evenly as possible over ``n_models`` models (the first get one more)."""
        base, extra = divmod(self.runs, n_models)
        return [base + (1 if i < extra else 0) for i in range(n_models)]
