"""Anytime-valid sequential testing for rate-limited suspects: one e-process per account.

Each queried pair yields an exact rank p-value ``p`` (super-uniform under H0). It is turned into an e-value
by the mixture calibrator ``e(p) = integral_0^1 k p^(k-1) dk = (1 - p + p ln p) / (p (ln p)^2)``, which has
``E[e(p)] <= 1`` for any super-uniform ``p`` (each ``k p^(k-1)`` integrates to 1 over U(0,1) and is
decreasing, so the discrete rank p-value only lowers the mean). Pair targets are independent under H0, so
the running product over an account's pairs is a test supermartingale: by Ville's inequality
``P(sup_t E_t >= 1/a) <= a`` for every stopping rule. With ``K`` accounts the e-process of an account is
compared to ``K / alpha`` (Bonferroni on e-processes), so the family-wise error stays below ``alpha`` even
when the investigation stops as soon as one account crosses. ``min(1, 1 / sup_t E_t)`` is an anytime-valid
p-value for each account.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def log_calibrated_e(p: float) -> float:
    """``ln e(p)`` of the mixture p-to-e calibrator (``e(1) = 0.5``, ``e(1e-4) ~ 118``)."""
    if not 0 < p <= 1:
        raise ValueError(f"p-value must lie in (0, 1], got {p}")
    if p > 1.0 - 1e-6:  # e(1) = 1/2; e is decreasing, so 1/2 is conservative near 1 (avoids cancellation)
        return math.log(0.5)
    lp = math.log(p)
    if p < 1e-12:  # 1 - p + p ln p == 1 to double precision
        return -lp - 2.0 * math.log(-lp)
    num = 1.0 - p + p * lp
    return math.log(num) - lp - 2.0 * math.log(-lp)


def calibrated_e(p: float) -> float:
    """The mixture-calibrated e-value ``(1 - p + p ln p) / (p (ln p)^2)`` of a p-value."""
    return math.exp(log_calibrated_e(p))


@dataclass
class EProcess:
    """The running product of calibrated e-values of one account's pairs (kept in log space)."""

    account: str
    log_e: float = 0.0
    log_e_max: float = 0.0
    steps: int = 0
    history: list[float] = field(default_factory=list)  # log10 E after each pair

    def update(self, p: float) -> float:
        """Multiply in the e-value of ``p``; return the new ``log10 E``."""
        self.log_e += log_calibrated_e(p)
        self.log_e_max = max(self.log_e_max, self.log_e)
        self.steps += 1
        self.history.append(self.log_e / math.log(10))
        return self.log_e / math.log(10)

    @property
    def e_value(self) -> float:
        return math.exp(min(self.log_e, 700.0))

    @property
    def log10_e(self) -> float:
        return self.log_e / math.log(10)

    @property
    def anytime_p(self) -> float:
        """``min(1, 1 / sup_t E_t)``: valid at any stopping time."""
        return math.exp(-self.log_e_max) if self.log_e_max > 0 else 1.0

    @property
    def log10_anytime_p(self) -> float:
        return -max(0.0, self.log_e_max) / math.log(10)


@dataclass
class SequentialMonitor:
    """E-processes of ``accounts`` with the stopping rule ``E_a >= K / alpha``."""

    accounts: list[str]
    alpha: float
    processes: dict[str, EProcess] = field(default_factory=dict)
    stopped_at: int | None = None  # number of pairs processed when the threshold was first crossed
    stopped_account: str | None = None
    pairs_seen: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.accounts:
            raise ValueError("a sequential test needs at least one account")
        self.processes = {a: EProcess(a) for a in self.accounts}

    @property
    def log_threshold(self) -> float:
        return math.log(len(self.accounts) / self.alpha)

    @property
    def threshold(self) -> float:
        return len(self.accounts) / self.alpha

    def update(self, account: str, p: float) -> bool:
        """Feed one pair's p-value; return True when some account has crossed the threshold (stop)."""
        proc = self.processes[account]
        proc.update(p)
        self.pairs_seen += 1
        if self.stopped_at is None and proc.log_e >= self.log_threshold:
            self.stopped_at = self.pairs_seen
            self.stopped_account = account
        return self.stopped_at is not None

    @property
    def crossed(self) -> list[str]:
        return [a for a, p in self.processes.items() if p.log_e_max >= self.log_threshold]

    def as_dict(self) -> dict:
        return {
            "method": "e-process: product of mixture-calibrated e-values per account, "
            "Bonferroni threshold K/alpha (Ville's inequality)",
            "calibrator": "e(p) = (1 - p + p ln p) / (p (ln p)^2)",
            "threshold": self.threshold,
            "log10_threshold": self.log_threshold / math.log(10),
            "pairs_seen": self.pairs_seen,
            "stopped_early_after_pairs": self.stopped_at,
            "stopped_account": self.stopped_account,
            "accounts": {
                a: {
                    "log10_e": p.log10_e,
                    "log10_e_max": p.log_e_max / math.log(10),
                    "anytime_p": p.anytime_p,
                    "steps": p.steps,
                    "log10_e_path": p.history,
                }
                for a, p in self.processes.items()
            },
        }
