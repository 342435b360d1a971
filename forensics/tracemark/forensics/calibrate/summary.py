"""False-alarm rates, the PASS rule and the family-wise versions of a calibration.

Null p-values are *super-uniform*, not uniform: ranks count ties against the target and a pair whose exact
search exceeds the scheme's budget is censored to ``p = 1``. Every check here is therefore one-sided: the
false-alarm rate's one-sided Clopper-Pearson upper bound against ``2 x alpha``, and a one-sided KS test of
"p stochastically smaller than uniform" (``D+ = max(F_n(x) - x)``), which a super-uniform sample passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.calibrate.params import min_runs

KS_LEVEL = 1e-3
CORRECTIONS = (("holm", "Holm (family-wise error rate)"), ("fdr_bh", "BH (false discovery rate)"))


def rule_text(alpha: float, conf: float) -> str:
    """The PASS rule, as printed with every result."""
    return (
        f"PASS iff at alpha = {alpha:g} the one-sided {conf:.0%} Clopper-Pearson upper bound of the "
        f"false-alarm rate over random-key null runs is <= 2 x alpha = {2 * alpha:g}, overall and in every "
        f"null family with >= {min_runs(alpha, conf)} runs (fewer cannot pass), the one-sided KS test (p "
        f"stochastically smaller than uniform) has p >= {KS_LEVEL:g} and every p-value is a valid rank "
        "p-value; too few runs to pass: INCONCLUSIVE. Other levels are reported, not gated."
    )


@dataclass(frozen=True)
class RateCheck:
    """``k`` false alarms in ``n`` runs at ``alpha``: the rate, its two-sided ``conf`` Clopper-Pearson
    interval and one-sided ``conf`` upper bound; ``passed`` iff that bound is ``<= 2 alpha``."""

    alpha: float
    k: int
    n: int
    conf: float
    rate: float
    ci: tuple[float, float]
    upper: float

    @property
    def limit(self) -> float:
        return 2.0 * self.alpha

    @property
    def passed(self) -> bool:
        return self.upper <= self.limit

    @property
    def decidable(self) -> bool:
        """Enough runs that zero false alarms would pass."""
        return self.n >= min_runs(self.alpha, self.conf)

    @property
    def status(self) -> str:
        if self.passed:
            return "pass"
        # too few runs to pass: a failure only when the rate is demonstrably above alpha
        return "FAIL" if self.decidable or self.ci[0] > self.alpha else "too few runs"

    def as_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "false_alarms": self.k,
            "runs": self.n,
            "rate": self.rate,
            "ci": list(self.ci),
            "conf": self.conf,
            "upper_one_sided": self.upper,
            "limit": self.limit,
            "decidable": self.decidable,
            "passed": self.passed,
            "status": self.status,
        }


def rate_check(k: int, n: int, alpha: float, conf: float = 0.95) -> RateCheck:
    """The PASS rule for ``k`` false alarms in ``n`` runs at ``alpha`` (see :class:`RateCheck`)."""
    return RateCheck(
        alpha=alpha,
        k=k,
        n=n,
        conf=conf,
        rate=k / n,
        ci=stats.clopper_pearson(k, n, conf),
        upper=stats.clopper_pearson(k, n, 2.0 * conf - 1.0)[1],  # = the one-sided conf upper bound
    )


def ks_smaller(pvalues: Sequence[float]) -> dict | None:
    """One-sided KS test of "p stochastically smaller than uniform": ``D+`` and its p-value."""
    if len(pvalues) < 2:
        return None
    from scipy import stats as sps  # deferred: scipy.stats costs a second at import

    res = sps.kstest(list(pvalues), "uniform", alternative="greater")
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "alternative": "p stochastically smaller than U(0,1)",
    }


@dataclass
class NullFamily:
    """Random-key null runs of one family of null models (or all of them: ``overall``)."""

    name: str
    models: list[str]
    pvalues: list[float]
    pairs: int
    censored: int
    checks: dict[float, RateCheck]
    ks: dict | None

    @classmethod
    def of(cls, name: str, tests: Sequence[Any], levels: Sequence[float], conf: float) -> NullFamily:
        ps = [t.p_value for t in tests]
        return cls(
            name=name,
            models=sorted({t.model for t in tests}),
            pvalues=ps,
            pairs=sum(len(t.ranks) for t in tests),
            censored=sum(t.censored for t in tests),
            checks={a: rate_check(sum(p <= a for p in ps), len(ps), a, conf) for a in levels},
            ks=ks_smaller(ps),
        )

    @property
    def runs(self) -> int:
        return len(self.pvalues)

    def as_dict(self) -> dict:
        return {
            "family": self.name,
            "models": self.models,
            "runs": self.runs,
            "pairs": self.pairs,
            "censored_pairs": self.censored,
            "levels": {str(a): c.as_dict() for a, c in self.checks.items()},
            "ks_one_sided": self.ks,
        }


def family_wise(tests: Sequence[Any], size: int, alpha: float, conf: float) -> dict[str, RateCheck | None]:
    """Families of ``size`` consecutive fresh accounts per null model (one investigation each): the rate
    of families with any rejection after Holm and after Benjamini-Hochberg at ``alpha``. Under this
    complete null every rejection is false, so both rates estimate P(any rejection)."""
    by_model: dict[str, list[float]] = {}
    for t in tests:
        by_model.setdefault(t.model, []).append(t.p_value)
    groups = [ps[i : i + size] for ps in by_model.values() for i in range(0, len(ps) - size + 1, size)]
    out: dict[str, RateCheck | None] = {}
    for method, _ in CORRECTIONS:
        if not groups:
            out[method] = None
            continue
        k = sum(any(stats.adjust_pvalues(g, alpha=alpha, method=method)[0]) for g in groups)
        out[method] = rate_check(k, len(groups), alpha, conf)
    return out


def verdict(
    overall: NullFamily, families: Sequence[NullFamily], alpha: float, problems: Sequence[str]
) -> tuple[str, list[str]]:
    """(``PASS`` | ``FAIL`` | ``INCONCLUSIVE``, reasons) under :func:`rule_text`."""
    reasons = list(problems)
    fail = bool(problems)
    inconclusive = False
    main = overall.checks[alpha]
    if main.status == "too few runs":
        inconclusive = True
        reasons.append(
            f"{main.n} runs cannot pass at alpha = {alpha:g} (need >= {min_runs(alpha, main.conf)})"
        )
    elif not main.passed:
        fail = True
        reasons.append(f"overall: upper bound {main.upper:.4f} > {main.limit:g} at alpha = {alpha:g}")
    for fam in families:
        c = fam.checks[alpha]
        if c.status == "FAIL":
            fail = True
            reasons.append(f"{fam.name}: upper bound {c.upper:.4f} > {c.limit:g} at alpha = {alpha:g}")
    if overall.ks is not None and overall.ks["p_value"] < KS_LEVEL:
        fail = True
        reasons.append(f"one-sided KS: D+ = {overall.ks['statistic']:.3f}, p = {overall.ks['p_value']:.2g}")
    return ("FAIL" if fail else "INCONCLUSIVE" if inconclusive else "PASS"), reasons


def check_validity(tests: Sequence[Any]) -> list[str]:
    """Problems that only a bug can cause: ranks outside ``1..n``, p-values outside ``(0, 1]``."""
    problems = []
    bad_rank = sum(any(not 1 <= r <= n for r, n in zip(t.ranks, t.ns, strict=True)) for t in tests)
    if bad_rank:
        problems.append(f"{bad_rank} account(s) with a rank outside 1..n")
    bad_p = sum(math.isnan(t.log10_p) or t.log10_p > 1e-12 or not 0 <= t.p_value <= 1 for t in tests)
    if bad_p:
        problems.append(f"{bad_p} account(s) with a p-value outside (0, 1]")
    return problems
