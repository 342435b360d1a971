"""The parameters of an investigation, validated in one place.

:class:`InvestigationParams` is built by every caller (``tracemark investigate``, the gRPC
``ForensicsService.Investigate``, tests); constructing one checks every parameter and raises
:class:`InvestigationError` (an ``InvalidInput``, so a ``ValueError``) naming the bad one. The check
that needs the suspect (:meth:`InvestigationParams.resolve_mode`) lives here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracemark.foundation.errors import InvalidInput

DETECTOR_VERSION = "tracemark-detect/2"
MODES = ("auto", "white-box", "black-box")
CORRECTIONS = ("holm", "fdr_bh")


class InvestigationError(InvalidInput):
    """Bad investigation parameters (alpha, mode, accounts, budget, ...); ``field`` names the parameter."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class InvestigationParams:
    """Everything an investigation is asked to do, apart from whom it asks (suspects) and where it writes.

    * ``alpha``: the level over accounts x suspects; ``correction``: ``holm`` (family-wise error rate) or
      ``fdr_bh`` (Benjamini-Hochberg: false discovery rate).
    * ``mode``: ``white-box`` (exact log-prob ranks; local models), ``black-box`` (sampled completions,
      ``query_budget`` completions per suspect, ``samples_per_pair`` default ``budget // pairs``), ``auto``.
    * ``sequential``: anytime-valid e-process per account that may stop early.
    * ``accounts``: the accounts to score (``None``: all). Only accounts with signature pairs delivered and
      a key commitment in the transparency log exist for an investigation; the multiplicity family is always
      all of them (accounts not scored count with p = 1), so narrowing the list never lowers a p-value.

    * ``channel``: also run the distributional channel's tests when the logged schemes carry a channel (the
      provider key: "trained on our outputs", a separate headline at ``provider_alpha``, default ``alpha``;
      each accusable account's channel key, combined with its pair evidence). ``channel_prompts`` (default
      the built-in public held-out problems), ``channel_samples`` completions per prompt of
      ``channel_max_new_tokens`` tokens at ``channel_temperature``; ``channel_decoys`` decoy keys checked
      on the same text.

    Everything else (pairs, candidate space, scoring contexts, search budget, decoys) comes from the
    signature scheme recorded at issuance; no seed exists (see docs/detection.md).
    """

    alpha: float = 1e-3
    mode: str = "auto"
    correction: str = "holm"
    query_budget: int = 200
    sequential: bool = False
    accounts: Sequence[str] | None = None
    samples_per_pair: int | None = None
    temperature: float = 0.0
    store_query_text: bool = True
    channel: bool = True
    channel_prompts: Sequence[str] | None = None
    channel_samples: int = 1
    channel_max_new_tokens: int = 128
    channel_temperature: float = 1.0
    channel_decoys: int = 400
    provider_alpha: float | None = None

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
        accounts = tuple(dict.fromkeys(self.accounts)) if self.accounts else None
        if accounts is not None and any(not isinstance(a, str) or not a.strip() for a in accounts):
            raise InvestigationError("account names must be non-empty strings", field="accounts")
        if self.samples_per_pair is not None and (
            not isinstance(self.samples_per_pair, int) or self.samples_per_pair < 1
        ):
            raise InvestigationError("samples_per_pair must be a positive integer", field="samples_per_pair")
        if not isinstance(self.temperature, int | float) or not 0 <= self.temperature <= 5:
            raise InvestigationError("temperature must be in [0, 5]", field="temperature")
        object.__setattr__(self, "accounts", accounts)
        self._check_channel()

    def _check_channel(self) -> None:
        prompts = tuple(self.channel_prompts) if self.channel_prompts is not None else None
        if prompts is not None and (
            not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts)
        ):
            raise InvestigationError("channel prompts must be non-empty strings", field="channel_prompts")
        for name, low, high in (
            ("channel_samples", 1, 1000),
            ("channel_max_new_tokens", 1, 4096),
            ("channel_decoys", 1, 100_000),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvestigationError(f"{name} must be an integer in {low}..{high}", field=name)
        t = self.channel_temperature
        if not isinstance(t, int | float) or not 0 <= t <= 5:
            raise InvestigationError("channel_temperature must be in [0, 5]", field="channel_temperature")
        pa = self.provider_alpha
        if pa is not None and (not isinstance(pa, int | float) or not 0 < pa < 1):
            raise InvestigationError(f"provider_alpha must be in (0, 1), got {pa!r}", field="provider_alpha")
        object.__setattr__(self, "channel_prompts", prompts)

    @property
    def provider_level(self) -> float:
        """The provider test's alpha (``provider_alpha``, else ``alpha``)."""
        return self.alpha if self.provider_alpha is None else self.provider_alpha

    def public(self) -> dict:
        """The parameters as the pre-registration records them."""
        return {
            "alpha": self.alpha,
            "mode": self.mode,
            "correction": self.correction,
            "query_budget": self.query_budget,
            "sequential": self.sequential,
            "accounts": list(self.accounts) if self.accounts else None,
            "samples_per_pair": self.samples_per_pair,
            "temperature": self.temperature,
            "channel": self.channel,
            "channel_samples": self.channel_samples,
            "channel_max_new_tokens": self.channel_max_new_tokens,
            "channel_temperature": self.channel_temperature,
            "channel_decoys": self.channel_decoys,
            "provider_alpha": self.provider_level,
        }

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
