"""The parameters of an investigation, validated in one place.

:class:`InvestigationParams` is built by every caller (``tracemark investigate``, the gRPC
``ForensicsService.Investigate``, tests); constructing one checks every parameter and raises
:class:`InvestigationError` (an ``InvalidInput``, so a ``ValueError``) naming the bad one. The checks that
need the candidate space or the suspect (:meth:`InvestigationParams.check_space`,
:meth:`InvestigationParams.resolve_mode`) live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracemark.forensics.scoring import DEFAULT_CONTEXTS, DEFAULT_PROBLEM
from tracemark.foundation.errors import InvalidInput

MODES = ("auto", "white-box", "black-box")
CORRECTIONS = ("holm", "fdr_bh")
COMBINES = ("max", "mean")


class InvestigationError(InvalidInput):
    """Bad investigation parameters (alpha, mode, accounts, budget, ...); ``field`` names the parameter."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class InvestigationParams:
    """Everything an investigation is asked to do, apart from whom it asks (suspects) and where it writes.

    * ``alpha``: family-wise level over accounts x suspects; ``correction``: ``holm`` or ``fdr_bh``.
    * ``mode``: ``white-box`` (exact log-prob ranks; local models), ``black-box`` (sampled completions,
      ``query_budget`` completions per suspect, ``samples_per_pair`` default ``budget // pairs``), ``auto``.
    * ``decoys``: ``None`` ranks the target among all ``N`` candidates; an integer ranks it among that many
      decoys drawn from the committed ``seed`` (``None``: a random seed, committed before querying).
    * ``sequential``: anytime-valid e-process per account that may stop early.
    * ``accounts``: the accounts to test (``None``: every ledger account); ``contexts``/``problem``: the
      scoring prompts (default built-in); ``combine``: how contexts combine in white-box scoring.
    """

    alpha: float = 1e-3
    mode: str = "auto"
    correction: str = "holm"
    query_budget: int = 200
    decoys: int | None = None
    seed: int | None = None
    sequential: bool = False
    accounts: Sequence[str] | None = None
    contexts: Sequence[str] | None = None
    problem: str | None = None
    combine: str = "max"
    samples_per_pair: int | None = None
    temperature: float = 0.0
    store_query_text: bool = True

    def __post_init__(self) -> None:
        alpha = self.alpha
        if not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise InvestigationError(f"alpha must be in (0, 1), got {alpha!r}", field="alpha")
        if self.mode not in MODES:
            raise InvestigationError(
                f"mode must be one of {', '.join(MODES)}, got {self.mode!r}", field="mode"
            )
        if self.correction not in CORRECTIONS:
            raise InvestigationError(
                f"correction must be holm or fdr_bh, got {self.correction!r}", field="correction"
            )
        if not isinstance(self.query_budget, int) or self.query_budget < 0:
            raise InvestigationError(
                f"query_budget must be a non-negative integer, got {self.query_budget!r}",
                field="query_budget",
            )
        if self.decoys is not None and (not isinstance(self.decoys, int) or self.decoys < 1):
            raise InvestigationError(
                f"decoys must be a positive integer (or omitted), got {self.decoys!r}", field="decoys"
            )
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise InvestigationError(f"seed must be a non-negative integer, got {self.seed!r}", field="seed")
        if self.combine not in COMBINES:
            raise InvestigationError(f"combine must be max or mean, got {self.combine!r}", field="combine")
        contexts = tuple(self.contexts) if self.contexts else DEFAULT_CONTEXTS
        if any("{trigger}" not in c for c in contexts):
            raise InvestigationError("every context must contain '{trigger}'", field="contexts")
        accounts = tuple(dict.fromkeys(self.accounts)) if self.accounts else None
        if accounts is not None and any(not isinstance(a, str) or not a.strip() for a in accounts):
            raise InvestigationError("account names must be non-empty strings", field="accounts")
        object.__setattr__(self, "contexts", contexts)
        object.__setattr__(self, "accounts", accounts)
        object.__setattr__(self, "problem", self.problem or DEFAULT_PROBLEM)

    def check_space(self, space: Any) -> None:
        """``decoys`` must leave room in the candidate ``space``."""
        if self.decoys is not None and not self.decoys < space.size:
            raise InvestigationError(
                f"decoys must be in 1..{space.size - 1} (or omitted), got {self.decoys}", field="decoys"
            )

    def resolve_mode(self, suspect: Any) -> str:
        """``white-box`` or ``black-box`` for ``suspect`` (``auto``: white-box for local models)."""
        white = bool(getattr(suspect, "white_box", False))
        resolved = ("white-box" if white else "black-box") if self.mode == "auto" else self.mode
        if resolved == "white-box" and not white:
            raise InvestigationError(
                f"suspect {suspect.spec!r} is black-box: use mode black-box or auto", field="mode"
            )
        if resolved == "black-box" and self.query_budget < 1:
            raise InvestigationError(
                "black-box investigations need a query budget of at least 1", field="query_budget"
            )
        return resolved
