"""Anytime-valid sequential testing for rate-limited suspects: one e-process per account.

Per-pair e-value
----------------
Each queried pair yields a rank ``r`` of its target among ``N`` candidates (1 = best). Ranks are
deterministic and conservative (``r = 1 + #better + #tied``), so under H0 ``P(r <= k) <= k / N`` for every
``k``, with equality when there are no ties. The rank is turned into the e-value

    ``e(r, N) = N / (r * H_N)``,  ``H_N = 1 + 1/2 + ... + 1/N``  (:func:`rank_e`).

*Validity.* For ``R`` uniform on ``{1..N}``: ``E[e(R, N)] = (1/N) sum_r N / (r H_N) = H_N / H_N = 1``
exactly. ``e(., N)`` is decreasing in ``r``; write ``f(r) = e(r, N)``, ``f(N + 1) = 0``. Summation by parts
gives, for any rank ``R`` on ``{1..N}``, ``E f(R) = sum_k (f(k) - f(k + 1)) P(R <= k)``: every coefficient
is ``>= 0``, so a super-uniform rank (``P(R <= k) <= k / N``) has ``E f(R) <= sum_k (f(k) - f(k + 1)) k / N
= 1``. A conservative rank therefore keeps ``E[e] <= 1``.

*Why this one.* It spends the whole null budget on small ranks in proportion ``1/r``: two pairs at rank 1
among ``10^6`` candidates give ``E = (10^6 / H_{10^6})^2 ~ 4.8e9``, enough to cross ``K / alpha`` for
thousands of accounts, where the p-to-e mixture calibrator (:func:`calibrated_e`, kept for p-values without
a known ``N``) gives ``~2.7e7`` (and ``1.4e4`` against ``1.04e6`` at ``N = 10^4``). The price is a
stronger penalty for bad ranks (``e(N, N) = 1 / H_N``).

E-process
---------
Pair targets are independent under H0, so the running product over an account's pairs is a test
supermartingale: by Ville's inequality ``P(sup_t E_t >= 1/a) <= a`` for every stopping rule. With ``K``
accounts the e-process of an account is compared to ``K / alpha`` (Bonferroni on e-processes), so the
family-wise error stays below ``alpha`` even when the investigation stops as soon as one account crosses.
``min(1, 1 / sup_t E_t)`` is an anytime-valid p-value for each account.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from functools import lru_cache

from tracemark.forensics.stats import StatsError

LN10 = math.log(10.0)
EULER_GAMMA = 0.57721566490153286060651209008240243
_EXACT_HARMONIC_UP_TO = 10_000
# relative margin that makes the floating-point H_N an upper bound (rounding is ~1e-16; e stays <= exact)
_HARMONIC_MARGIN = 1e-14


def _check_rank(rank: int, n: int) -> tuple[int, int]:
    """``(rank, n)`` as ints, or a one-line :class:`StatsError` for a non-integer or out-of-range rank."""
    out = []
    for name, value in (("rank", rank), ("number of candidates", n)):
        try:
            if isinstance(value, bool):
                raise TypeError
            out.append(operator.index(value))
        except TypeError:
            raise StatsError(f"the {name} must be an integer, got {type(value).__name__}") from None
    r, big_n = out
    if big_n < 1:
        raise StatsError(f"the number of candidates must be >= 1, got {big_n}")
    if not 1 <= r <= big_n:
        raise StatsError(f"rank {r} outside 1..{big_n}")
    return r, big_n


@lru_cache(maxsize=64)
def _harmonic_exact(n: int) -> float:
    return math.fsum(1.0 / k for k in range(1, n + 1))


def harmonic(n: int) -> float:
    """``H_n = sum_{k<=n} 1/k``, never below the true value by more than rounding (it is an upper bound).

    Exact (correctly rounded ``fsum``) for ``n <= 10^4``; above, the Euler-Maclaurin expansion
    ``ln n + gamma + 1/(2n) - 1/(12 n^2) + 1/(120 n^4)``, whose remainder is negative and below
    ``1/(252 n^6)`` (< 1e-26 here), so it overestimates ``H_n``. A ``1e-14`` relative margin covers the
    float rounding either way, so the e-value computed from it never exceeds the exact one.
    """
    n = int(n)
    if n < 1:
        raise StatsError(f"harmonic numbers need n >= 1, got {n}")
    if n <= _EXACT_HARMONIC_UP_TO:
        return _harmonic_exact(n) * (1.0 + _HARMONIC_MARGIN)
    inv = 1.0 / n
    inv2 = inv * inv
    value = math.log(n) + EULER_GAMMA + 0.5 * inv - inv2 / 12.0 + inv2 * inv2 / 120.0
    return value * (1.0 + _HARMONIC_MARGIN)


def log_rank_e(rank: int, n: int) -> float:
    """``ln e(rank, n)`` with ``e(r, N) = N / (r H_N)`` (null mean exactly 1; see the module docstring)."""
    rank, n = _check_rank(rank, n)
    return math.log(n) - math.log(rank) - math.log(harmonic(n))


def rank_e(rank: int, n: int) -> float:
    """The e-value ``N / (r H_N)`` of a rank ``r`` among ``N`` candidates (``rank_e(1, 10**6) ~ 69,480``)."""
    return math.exp(log_rank_e(rank, n))


def log_calibrated_e(p: float) -> float:
    """``ln e(p)`` of the mixture p-to-e calibrator (``e(1) = 0.5``, ``e(1e-4) ~ 118``), for p-values
    without a known number of candidates. Superseded by :func:`log_rank_e` for ranks."""
    if not 0 < p <= 1:
        raise StatsError(f"p-value must lie in (0, 1], got {p}")
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
    """The running product of the rank e-values of one account's pairs (kept in log space)."""

    account: str
    log_e: float = 0.0
    log_e_max: float = 0.0
    steps: int = 0
    history: list[float] = field(default_factory=list)  # log10 E after each pair

    def update(self, rank: int, n: int) -> float:
        """Multiply in ``e(rank, n)`` of one pair (rank 1 = best among ``n``); return the new ``log10 E``.

        Raises :class:`~tracemark.forensics.stats.StatsError` for a non-integer rank or one outside ``1..n``.
        """
        self.log_e += log_rank_e(rank, n)
        self.log_e_max = max(self.log_e_max, self.log_e)
        self.steps += 1
        self.history.append(self.log_e / LN10)
        return self.log_e / LN10

    @property
    def e_value(self) -> float:
        return math.exp(min(self.log_e, 700.0))

    @property
    def log10_e(self) -> float:
        return self.log_e / LN10

    @property
    def anytime_p(self) -> float:
        """``min(1, 1 / sup_t E_t)``: valid at any stopping time."""
        return math.exp(-self.log_e_max) if self.log_e_max > 0 else 1.0

    @property
    def log10_anytime_p(self) -> float:
        return -max(0.0, self.log_e_max) / LN10


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
            raise StatsError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.accounts:
            raise StatsError("a sequential test needs at least one account")
        self.processes = {a: EProcess(a) for a in self.accounts}

    @property
    def log_threshold(self) -> float:
        return math.log(len(self.accounts) / self.alpha)

    @property
    def threshold(self) -> float:
        return len(self.accounts) / self.alpha

    def update(self, account: str, rank: int, n: int) -> bool:
        """Feed one pair's rank among ``n`` candidates; return True once some account has crossed the
        threshold (stop)."""
        proc = self.processes.get(account)
        if proc is None:
            raise StatsError("the account is not part of this sequential test")
        proc.update(rank, n)
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
            "method": "e-process: product of per-pair rank e-values per account, "
            "Bonferroni threshold K/alpha (Ville's inequality)",
            "calibrator": "e(r, N) = N / (r H_N), H_N the N-th harmonic number",
            "threshold": self.threshold,
            "log10_threshold": self.log_threshold / LN10,
            "pairs_seen": self.pairs_seen,
            "stopped_early_after_pairs": self.stopped_at,
            "stopped_account": self.stopped_account,
            "accounts": {
                a: {
                    "log10_e": p.log10_e,
                    "log10_e_max": p.log_e_max / LN10,
                    "anytime_p": p.anytime_p,
                    "steps": p.steps,
                    "log10_e_path": p.history,
                }
                for a, p in self.processes.items()
            },
        }
