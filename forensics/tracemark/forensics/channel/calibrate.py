"""The decoy-key check: the channel test's p-values on a suspect's real text under keys nobody used.

Decoy keys (scope ``decoy``) are derived from a public seed (an investigation's beacon), so anyone can
re-derive them, and no text was ever decoded under them: H0 holds for each by construction. On one tuple
set the decoys' green counts are independent (independent PRF keys), so their p-values are an i.i.d.
sample of the test's null distribution on exactly this suspect's text. The check applies the calibration's
rule (:mod:`tracemark.forensics.calibrate.summary`): at each ``alpha`` the one-sided ``conf``
Clopper-Pearson upper bound of the decoys' false-alarm rate must be ``<= 2 alpha``, and a one-sided KS test
of "p stochastically smaller than uniform" must not reject at 1e-3 (binomial p-values are discrete, hence
super-uniform: only the excess of small p-values is a failure).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tracemark.forensics import stats
from tracemark.forensics.channel.score import ChannelTest, score_tuples
from tracemark.foundation.channel import ChannelKey, ChannelSpec

DECOY_LABEL = "tm-channel-decoy-v1"
KS_LEVEL = 1e-3
DEFAULT_DECOYS = 400
DEFAULT_LEVELS = (0.1, 0.05, 0.01)
MIN_EXPECTED = 20
"""A level is gated only with at least this many expected false alarms (``k * alpha``): fewer, and a valid
test fails the ``2 alpha`` bound by chance too often (at 150 decoys and alpha = 0.01, two hits fail it)."""


def decoy_keys(seed: str, k: int) -> list[ChannelKey]:
    """``k`` decoy keys from the public ``seed``: ``SHA-256(label | seed | i)``, scope ``decoy``."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of decoy keys must be a positive integer, got {k!r}")
    return [
        ChannelKey(
            secret=hashlib.sha256(f"{DECOY_LABEL}\x00{seed}\x00{i}".encode()).digest(),
            scope="decoy",
            name=str(i),
        )
        for i in range(k)
    ]


def min_decoys(alpha: float) -> int:
    """Fewest decoys for which ``alpha`` is gated (:data:`MIN_EXPECTED` expected false alarms)."""
    return math.ceil(MIN_EXPECTED / alpha - 1e-9)


@dataclass(frozen=True)
class DecoyRate:
    """``k`` of ``n`` decoy p-values ``<= alpha``; ``upper`` its one-sided ``conf`` CP upper bound."""

    alpha: float
    k: int
    n: int
    upper: float

    @property
    def passed(self) -> bool:
        return self.upper <= 2.0 * self.alpha

    @property
    def decidable(self) -> bool:
        return self.n >= min_decoys(self.alpha)

    def as_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "false_alarms": self.k,
            "decoys": self.n,
            "rate": self.k / self.n if self.n else 0.0,
            "upper_one_sided": self.upper,
            "limit": 2.0 * self.alpha,
            "decidable": self.decidable,
            "passed": self.passed,
        }


@dataclass
class DecoyCheck:
    """The decoy-key check of one tuple set (module doc)."""

    seed: str
    n_tuples: int
    pvalues: list[float] = field(repr=False)
    rates: list[DecoyRate]
    ks_statistic: float | None
    ks_p_value: float | None
    conf: float = 0.95

    @property
    def passed(self) -> bool:
        """Every decidable level within ``2 alpha`` (CP bound) and KS not rejecting at 1e-3."""
        ks_ok = self.ks_p_value is None or self.ks_p_value >= KS_LEVEL
        return ks_ok and all(r.passed for r in self.rates if r.decidable)

    def as_dict(self) -> dict:
        return {
            "decoy_keys": len(self.pvalues),
            "seed": self.seed,
            "derivation": f"SHA-256('{DECOY_LABEL}' NUL seed NUL i), i = 0..{len(self.pvalues) - 1}",
            "distinct_tuples": self.n_tuples,
            "rates": [r.as_dict() for r in self.rates],
            "ks_smaller": {"statistic": self.ks_statistic, "p_value": self.ks_p_value, "level": KS_LEVEL},
            "rule": "at each alpha, the one-sided 95% Clopper-Pearson upper bound of the decoys' false-alarm "
            "rate is <= 2 x alpha (gated where decoys x alpha >= 20, else reported); one-sided KS "
            "(p stochastically smaller than uniform) p >= 1e-3",
            "passed": self.passed,
        }


def decoy_check(
    tuples: Iterable[tuple[int, int]],
    *,
    spec: ChannelSpec,
    seed: str,
    k: int = DEFAULT_DECOYS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    conf: float = 0.95,
) -> DecoyCheck:
    """Score ``tuples`` under ``k`` decoy keys from ``seed`` and check their p-values (module doc)."""
    tuples = set(tuples)
    tests: list[ChannelTest] = [score_tuples(tuples, key=key, spec=spec) for key in decoy_keys(seed, k)]
    ps = [t.p_value for t in tests]
    rates = []
    for alpha in levels:
        hits = sum(1 for p in ps if p <= alpha)
        upper = stats.clopper_pearson(hits, len(ps), 2.0 * conf - 1.0)[1]
        rates.append(DecoyRate(alpha=alpha, k=hits, n=len(ps), upper=upper))
    ks_stat = ks_p = None
    if len(ps) >= 2:
        from scipy import stats as sps  # deferred: scipy.stats costs a second at import

        res = sps.kstest(ps, "uniform", alternative="greater")
        ks_stat, ks_p = float(res.statistic), float(res.pvalue)
    return DecoyCheck(
        seed=seed,
        n_tuples=len(tuples),
        pvalues=ps,
        rates=rates,
        ks_statistic=ks_stat,
        ks_p_value=ks_p,
        conf=conf,
    )
