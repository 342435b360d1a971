"""Exact statistics of the rank test: rank p-values, the exact rank-product combination (Fisher's
chi-square as its bound), multiplicity control across accounts, effect sizes with confidence intervals and
uniformity checks.

Conventions
-----------
* Ranks are 1-based, rank 1 = the best score. Investigations use deterministic, conservative ranks
  (:func:`conservative_rank`: ``1 + #better + #tied``, ties count against the target), so under H0 (the
  target is exchangeable with the other candidates) ``P(rank <= k) <= k / n``: super-uniform, exactly
  uniform when there are no ties. :func:`rank_with_ties` (random tie-breaking) is kept for old reports.
* Per account, the ranks are combined exactly (:func:`combine_ranks`): the p-value of the rank product under
  independent uniform ranks, counted with integers (:mod:`tracemark.forensics.lattice`). Fisher's
  chi-square(2m) of the ``rank / n`` is an upper bound on it, used only when the count is too expensive.
* Tail probabilities are computed in log space: ``scipy.stats.chi2.logsf`` where it is finite, else the
  closed form of the chi-square survival function for even degrees of freedom (Fisher's statistic always
  has ``2m``), so combined p-values like ``1e-3000`` keep an exact ``log10``. ``1 - cdf`` is never used.
* Multiplicity: Holm and Bonferroni control the family-wise error rate (the chance of accusing any
  innocent account); Benjamini-Hochberg (``fdr_bh``) controls the false discovery rate (the expected share
  of innocent accounts among those accused), which is weaker and is *not* family-wise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import gammaln, logsumexp
from tracemark.forensics import lattice
from tracemark.foundation.errors import InvalidInput


def _scipy_stats() -> Any:
    """``scipy.stats``, imported on first use: it costs about a second, and every `tracemark` command
    (``--help`` included) imports this module through the CLI."""
    from scipy import stats  # deferred: heavy (see docstring)

    return stats


LN10 = math.log(10.0)
CORRECTIONS = ("holm", "fdr_bh", "bonferroni")
_CORRECTION_MEANINGS = {
    "holm": "Holm step-down: controls the family-wise error rate (the chance of accusing any innocent "
    "account) at alpha",
    "bonferroni": "Bonferroni: controls the family-wise error rate (the chance of accusing any innocent "
    "account) at alpha",
    "fdr_bh": "Benjamini-Hochberg: controls the false discovery rate (the expected share of innocent "
    "accounts among those accused) at alpha; it does not control the family-wise error rate",
}


class StatsError(InvalidInput):
    """Invalid input to a statistical routine (a p-value outside (0, 1], an empty list, ...)."""


# --- ranks and per-pair p-values --------------------------------------------------------------
def conservative_rank(n_better: int, n_tied: int) -> int:
    """Deterministic conservative rank ``1 + n_better + n_tied`` (ties count against the target): under H0
    ``P(rank <= k) <= k / n``, with equality when nothing ties."""
    if n_better < 0 or n_tied < 0:
        raise StatsError("n_better and n_tied must be non-negative")
    return 1 + int(n_better) + int(n_tied)


def rank_with_ties(n_better: int, n_tied: int, rng: Any) -> int:
    """1-based rank of a candidate with ``n_better`` strictly better competitors and ``n_tied`` others with
    exactly its score: ``n_better + 1 + U``, ``U`` uniform on ``{0..n_tied}`` (random tie-breaking)."""
    if n_better < 0 or n_tied < 0:
        raise StatsError("n_better and n_tied must be non-negative")
    extra = rng.randrange(n_tied + 1) if n_tied else 0
    return int(n_better) + 1 + int(extra)


def rank_from_scores(
    target_score: float, scores: np.ndarray, rng: Any, *, target_included: bool = True
) -> int:
    """Rank of ``target_score`` among ``scores`` (higher is better), ties broken at random.

    With ``target_included`` the array holds the target's own score once (it is not counted as a tie).
    """
    arr = np.asarray(scores)
    better = int(np.count_nonzero(arr > target_score))
    tied = int(np.count_nonzero(arr == target_score)) - (1 if target_included else 0)
    if tied < 0:
        raise StatsError("the target's score is not among the scores")
    return rank_with_ties(better, tied, rng)


def rank_pvalue(rank: int, n: int) -> float:
    """Exact p-value of a rank among ``n`` exchangeable candidates: ``rank / n`` (uniform under H0)."""
    if not isinstance(n, int | np.integer) or n < 1:
        raise StatsError(f"the number of candidates must be a positive integer, got {n!r}")
    if not 1 <= rank <= n:
        raise StatsError(f"rank {rank} outside 1..{n}")
    return rank / n


# --- Fisher combination -----------------------------------------------------------------------
def chi2_logsf_even(x: float, df: int) -> float:
    """``log P(chi2_df > x)`` for even ``df`` in closed form (exact, no underflow):
    ``-x/2 + log sum_{k<df/2} (x/2)^k / k!``."""
    if df < 2 or df % 2:
        raise StatsError(f"closed-form chi-square tail needs an even df >= 2, got {df}")
    if x <= 0:
        return 0.0
    half = x / 2.0
    k = np.arange(df // 2, dtype=float)
    return float(-half + logsumexp(k * math.log(half) - gammaln(k + 1)))


def chi2_logsf(x: float, df: int) -> float:
    """``log P(chi2_df > x)``: ``scipy.stats.chi2.logsf``; the exact even-df form where scipy underflows."""
    value = float(_scipy_stats().chi2.logsf(x, df))
    if math.isfinite(value) and value > -700.0:
        return value
    if df % 2 == 0:
        return chi2_logsf_even(x, df)
    return value  # odd df never arises from Fisher's method


class _LogP:
    """A combined p-value kept as its natural log (``log_p``), shown as ``p_value`` and ``log10_p``."""

    log_p: float

    @property
    def p_value(self) -> float:
        """The combined p-value (``0.0`` only if it is below the smallest float; see ``log10_p``)."""
        return math.exp(self.log_p)

    @property
    def log10_p(self) -> float:
        return self.log_p / LN10


@dataclass(frozen=True)
class FisherResult(_LogP):
    """Fisher's combination ``X = -2 sum ln p_i`` ~ chi-square(2m) under H0."""

    statistic: float
    df: int
    log_p: float  # natural log of the combined p-value


def fisher_combine(
    pvalues: Sequence[float] | None = None, *, log_pvalues: Sequence[float] | None = None
) -> FisherResult:
    """Combine independent p-values (or their natural logs, for values below the float range)."""
    if (pvalues is None) == (log_pvalues is None):
        raise StatsError("give exactly one of pvalues or log_pvalues")
    if log_pvalues is None:
        ps = np.asarray(pvalues, dtype=float)
        if ps.size == 0:
            raise StatsError("no p-values to combine")
        if np.any(~np.isfinite(ps)) or np.any(ps <= 0) or np.any(ps > 1):
            raise StatsError("p-values must lie in (0, 1]")
        logs = np.log(ps)
    else:
        logs = np.asarray(log_pvalues, dtype=float)
        if logs.size == 0:
            raise StatsError("no p-values to combine")
        if np.any(np.isnan(logs)) or np.any(logs > 0) or np.any(np.isneginf(logs)):
            raise StatsError("log p-values must be finite and <= 0")
    statistic = float(-2.0 * logs.sum())
    df = 2 * int(logs.size)
    return FisherResult(statistic=statistic, df=df, log_p=min(0.0, chi2_logsf(statistic, df)))


# --- exact combination of discrete ranks ---------------------------------------------------------
COMBINATION_METHODS = ("exact", "fisher-bound")


@dataclass(frozen=True)
class RankCombination(_LogP):
    """One account's combined evidence: ``statistic = sum ln(r_i / n_i)`` and its p-value (natural log)."""

    m: int
    statistic: float
    log_p: float
    method: str  # "exact" (integer count) or "fisher-bound" (chi-square(2m), an upper bound on the exact p)

    def as_dict(self) -> dict:
        return {
            "m": self.m,
            "statistic": self.statistic,
            "log_p": self.log_p,
            "log10_p": self.log10_p,
            "p_value": self.p_value,
            "method": self.method,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _checked_ranks(ranks: Sequence[int], ns: Sequence[int]) -> tuple[list[int], list[int]]:
    rs, nn = list(ranks), list(ns)
    if not rs:
        raise StatsError("no ranks to combine")
    if len(rs) != len(nn):
        raise StatsError(f"{len(rs)} ranks but {len(nn)} candidate counts")
    out_r, out_n = [], []
    for r, n in zip(rs, nn, strict=True):
        if not (_is_int(r) and _is_int(n)):
            raise StatsError("ranks and candidate counts must be integers")
        if n < 1 or not 1 <= r <= n:
            raise StatsError(f"rank {int(r)} outside 1..{int(n)}")
        out_r.append(int(r))
        out_n.append(int(n))
    return out_r, out_n


def combine_ranks(ranks: Sequence[int], ns: Sequence[int], *, max_work: int = 20_000_000) -> RankCombination:
    """Exact p-value of the rank product of independent pairs: ``P0(prod R_i / n_i <= prod r_i / n_i)``.

    Under H0 ``R_i`` is uniform on ``{1..n_i}``, independently. The ``n_i`` cancel, so the p-value is
    ``#{R in [1..n_1] x ... x [1..n_m] : prod R_i <= prod r_i} / prod n_i``, an integer count
    (:func:`tracemark.forensics.lattice.count_products`), returned as a natural log (``log count -
    sum log n_i``; exact to double precision for any size). It is a valid p-value for conservative ranks
    too: a super-uniform rank is stochastically larger than a uniform one and the product is increasing in
    each rank, so ``P(p <= x) <= x``.

    When the count needs more than ``max_work`` units (``2e7`` is a few tenths of a second: large
    products with ``m >= 3``), Fisher's chi-square(2m) p-value of ``p_i = r_i / n_i`` is returned
    instead, with ``method = "fisher-bound"``. It is an upper bound on the exact p-value, so still valid.
    Proof (coupling): with ``U_i`` independent U(0, 1), ``R_i = ceil(n_i U_i)`` is uniform on
    ``{1..n_i}`` and ``R_i / n_i >= U_i`` pointwise. Hence the event ``prod R_i / n_i <= x`` implies
    ``prod U_i <= x``, and ``P0(prod R_i / n_i <= x) <= P(prod U_i <= x) = P(chi2_2m >= -2 ln x)``,
    which at ``x = prod p_i`` is Fisher's p-value.
    """
    rs, nn = _checked_ranks(ranks, ns)
    statistic = math.fsum(math.log(r) - math.log(n) for r, n in zip(rs, nn, strict=True))
    try:
        count = lattice.count_products(math.prod(rs), nn, max_work=max_work)
    except lattice.WorkExceeded:
        fisher = fisher_combine(log_pvalues=[math.log(r) - math.log(n) for r, n in zip(rs, nn, strict=True)])
        return RankCombination(m=len(rs), statistic=statistic, log_p=fisher.log_p, method="fisher-bound")
    log_p = min(0.0, math.log(count) - math.fsum(math.log(n) for n in nn))
    return RankCombination(m=len(rs), statistic=statistic, log_p=log_p, method="exact")


def rank_combination_null_curve(
    ns: Sequence[int], points: int = 60, *, max_work: int = 20_000_000
) -> list[tuple[float, float]]:
    """The exact null CDF of the rank product, for plotting: ``(log10 x, log10 P0(prod R_i / n_i <= x))``.

    The grid is ``x = T / prod n_i`` for about ``points`` integers ``T`` log-spaced in ``1..prod n_i`` (so
    each ``x`` is exact). Every point is an exact count; points whose count would pass the total budget
    ``max_work`` (shared by the whole curve, cheapest points first; under a second) are left out, never
    approximated.
    """
    if points < 2:
        raise StatsError("a null curve needs at least two points")
    _, nn = _checked_ranks([1] * len(list(ns)), ns)
    log10_total = math.fsum(math.log10(n) for n in nn)
    total = math.prod(nn)
    grid = sorted({max(1, min(total, _pow10_int(log10_total * i / (points - 1)))) for i in range(points)})
    grid[-1] = total
    remaining = max_work
    curve = []
    for t in sorted(grid, key=lambda t: lattice.estimate_work(t, nn)):  # cheap points first
        meter = lattice.WorkMeter(remaining)
        try:
            count = lattice.count_products(t, nn, meter=meter)
        except lattice.WorkExceeded:
            continue  # left out, never approximated
        finally:
            remaining -= min(meter.used, remaining)
        curve.append((math.log10(t) - log10_total, min(0.0, math.log10(count) - log10_total)))
    return sorted(curve)


def _pow10_int(exponent: float) -> int:
    """``round(10 ** exponent)`` as an int, also past the float range (16 significant digits)."""
    shift = max(0, math.floor(exponent) - 15)
    return round(10 ** (exponent - shift)) * 10**shift


def correction_meaning(method: str) -> str:
    """One line saying what a multiplicity correction controls (Holm, Bonferroni: family-wise error rate;
    ``fdr_bh``: false discovery rate, which is not family-wise), for reports."""
    meaning = _CORRECTION_MEANINGS.get(method)
    if meaning is None:
        raise StatsError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    return meaning


# --- multiplicity -------------------------------------------------------------------------------
def adjust_pvalues(
    pvalues: Sequence[float], *, alpha: float, method: str = "holm"
) -> tuple[list[bool], list[float]]:
    """(rejected, adjusted p-values) from statsmodels ``multipletests``.

    ``holm`` and ``bonferroni`` control the family-wise error rate at ``alpha``; ``fdr_bh``
    (Benjamini-Hochberg) controls the false discovery rate at ``alpha``, not the family-wise error rate
    (see :func:`correction_meaning`).
    """
    from statsmodels.stats.multitest import multipletests

    if method not in CORRECTIONS:
        raise StatsError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")
    ps = np.asarray(pvalues, dtype=float)
    if ps.size == 0:
        return [], []
    if np.any(np.isnan(ps)) or np.any(ps < 0) or np.any(ps > 1):
        raise StatsError("p-values must lie in [0, 1]")
    reject, adjusted, _, _ = multipletests(ps, alpha=alpha, method=method)
    return [bool(r) for r in reject], [float(min(1.0, a)) for a in adjusted]


# --- effect sizes and intervals -----------------------------------------------------------------
def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion ``k / n``."""
    if n < 1 or not 0 <= k <= n:
        raise StatsError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < conf < 1:
        raise StatsError(f"conf must be in (0, 1), got {conf}")
    a = 1.0 - conf
    lo = 0.0 if k == 0 else float(_scipy_stats().beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_scipy_stats().beta.isf(a / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class EffectSize:
    """Per-pair evidence: mean ``-log10 p`` (bootstrap CI) and the share of pairs in the top 1% (exact CI)."""

    n_pairs: int
    mean_neg_log10_p: float
    mean_ci: tuple[float, float]
    top1_count: int
    top1_fraction: float
    top1_ci: tuple[float, float]
    null_mean_neg_log10_p: float
    conf: float

    def as_dict(self) -> dict:
        return {
            "n_pairs": self.n_pairs,
            "mean_neg_log10_p": self.mean_neg_log10_p,
            "mean_neg_log10_p_ci": list(self.mean_ci),
            "mean_neg_log10_p_under_h0": self.null_mean_neg_log10_p,
            "top1pct_count": self.top1_count,
            "top1pct_fraction": self.top1_fraction,
            "top1pct_fraction_ci": list(self.top1_ci),
            "top1pct_fraction_under_h0": 0.01,
            "conf": self.conf,
        }


def effect_size(
    pvalues: Sequence[float], *, conf: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> EffectSize:
    """Effect sizes of a set of per-pair p-values, with intervals.

    ``mean -log10 p`` is ``1/ln 10 ~ 0.434`` under H0 (continuous uniform); its interval is a percentile
    bootstrap (seeded). The top-1% share (``p <= 0.01``) has an exact Clopper-Pearson interval.
    """
    ps = np.asarray(pvalues, dtype=float)
    if ps.size == 0:
        raise StatsError("no p-values")
    scores = -np.log10(ps)
    mean = float(scores.mean())
    if ps.size == 1:
        ci = (mean, mean)
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, ps.size, size=(n_boot, ps.size))
        boots = scores[idx].mean(axis=1)
        a = (1.0 - conf) / 2
        ci = (float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)))
    k = int(np.count_nonzero(ps <= 0.01))
    return EffectSize(
        n_pairs=int(ps.size),
        mean_neg_log10_p=mean,
        mean_ci=ci,
        top1_count=k,
        top1_fraction=k / ps.size,
        top1_ci=clopper_pearson(k, int(ps.size), conf),
        null_mean_neg_log10_p=1.0 / LN10,
        conf=conf,
    )


# --- uniformity ---------------------------------------------------------------------------------
@dataclass
class UniformityResult:
    """Outcome of :func:`ks_uniformity` (``uniform`` is the verdict at level ``level``)."""

    n: int
    statistic: float
    p_value: float
    level: float
    uniform: bool
    method: str
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "ks_statistic": self.statistic,
            "ks_p_value": self.p_value,
            "level": self.level,
            "uniform": self.uniform,
            "method": self.method,
            "problems": list(self.problems),
        }


def randomize_discrete(pvalues: Sequence[float], n_candidates: Sequence[int] | int, rng: Any) -> np.ndarray:
    """Continuous versions ``u = p - V / n`` (``V`` ~ U(0,1)) of discrete rank p-values on ``{1/n..1}``:
    exactly U(0, 1) under H0, so a KS test against the uniform is exact and not conservative."""
    ps = np.asarray(pvalues, dtype=float)
    ns = np.broadcast_to(np.asarray(n_candidates, dtype=float), ps.shape)
    if hasattr(rng, "random") and hasattr(rng, "integers"):
        v = rng.random(ps.size)
    else:
        v = np.array([rng.random() for _ in range(ps.size)])
    return ps - v / ns


def ks_uniformity(
    pvalues: Sequence[float],
    *,
    n_candidates: Sequence[int] | int | None = None,
    level: float = 1e-3,
    seed: int = 0,
) -> UniformityResult:
    """Kolmogorov-Smirnov test of ``pvalues`` against U(0, 1).

    Rank p-values are discrete (``k/n``). With ``n_candidates`` they are first randomized within their
    atom (:func:`randomize_discrete`), which makes the test exact. Without it they are tested as given:
    fine for large ``n`` (atoms of width ``1/n`` move the KS statistic by at most ``1/n``), conservative
    otherwise. Values outside (0, 1], or not on the grid ``k/n`` when ``n_candidates`` is given, fail the
    check outright (they cannot come from a correct rank).
    """
    ps = np.asarray(pvalues, dtype=float)
    if ps.size < 2:
        raise StatsError("need at least two p-values for a uniformity test")
    problems: list[str] = []
    bad = np.count_nonzero((ps <= 0) | (ps > 1) | ~np.isfinite(ps))
    if bad:
        problems.append(f"{bad} p-value(s) outside (0, 1]")
    method = "ks (p-values as given)"
    sample = ps
    if n_candidates is not None:
        ns = np.broadcast_to(np.asarray(n_candidates, dtype=float), ps.shape)
        k = ps * ns
        off_grid = np.count_nonzero(np.abs(k - np.round(k)) > 1e-6 * np.maximum(1.0, ns))
        if off_grid:
            problems.append(f"{off_grid} p-value(s) not of the form rank/n")
        sample = randomize_discrete(ps, ns, np.random.default_rng(seed))
        method = "ks (randomized within each rank atom: exact)"
    res = _scipy_stats().kstest(np.clip(sample, 0.0, 1.0) if not problems else sample, "uniform")
    stat, pv = float(res.statistic), float(res.pvalue)
    return UniformityResult(
        n=int(ps.size),
        statistic=stat,
        p_value=pv,
        level=level,
        uniform=(not problems) and pv >= level,
        method=method,
        problems=problems,
    )


def rank_uniformity(ranks: Sequence[int], n: int, *, level: float = 1e-3) -> UniformityResult:
    """Chi-square goodness of fit of ranks to the uniform on ``{1..n}`` (``n`` small, e.g. D+1 <= 100).

    For large ``n`` the ranks are binned into at most 20 equal-width bins of ``1..n``.
    """
    r = np.asarray(ranks, dtype=int)
    if r.size < 2:
        raise StatsError("need at least two ranks")
    problems = []
    bad = int(np.count_nonzero((r < 1) | (r > n)))
    if bad:
        problems.append(f"{bad} rank(s) outside 1..{n}")
    bins = min(n, 20)
    edges = np.linspace(0.5, n + 0.5, bins + 1)
    counts, _ = np.histogram(np.clip(r, 1, n), bins=edges)
    # expected counts: how many of the integers 1..n fall in each bin
    widths, _ = np.histogram(np.arange(1, n + 1), bins=edges)
    expected = r.size * widths / widths.sum()
    res = _scipy_stats().chisquare(counts, expected)
    stat, pv = float(res.statistic), float(res.pvalue)
    return UniformityResult(
        n=int(r.size),
        statistic=stat,
        p_value=pv,
        level=level,
        uniform=(not problems) and pv >= level,
        method=f"chi-square on {bins} rank bins",
        problems=problems,
    )


def mean_test(pvalues: Sequence[float], n: int) -> tuple[float, float]:
    """(z, two-sided p) of the mean of rank p-values against its exact H0 moments: ``p`` uniform on
    ``{1/n..1}`` has mean ``(n+1)/(2n)`` and variance ``(n^2-1)/(12 n^2)``. An off-by-one rank moves the
    mean by ``1/n``."""
    ps = np.asarray(pvalues, dtype=float)
    if ps.size < 2 or n < 2:
        raise StatsError("need at least two p-values and n >= 2")
    mu = (n + 1) / (2 * n)
    sd = math.sqrt((n * n - 1) / (12.0 * n * n))
    z = (float(ps.mean()) - mu) / (sd / math.sqrt(ps.size))
    return z, float(2 * _scipy_stats().norm.sf(abs(z)))


@dataclass
class UniformityReport:
    """A battery of checks that rank p-values on ``{1/n..1}`` are exactly uniform (each at ``level``)."""

    n_values: int
    n_candidates: int
    level: float
    ks: UniformityResult
    mean_z: float
    mean_p: float
    ranks: UniformityResult
    problems: list[str] = field(default_factory=list)

    @property
    def uniform(self) -> bool:
        return not self.problems and self.ks.uniform and self.mean_p >= self.level and self.ranks.uniform

    def as_dict(self) -> dict:
        return {
            "n_values": self.n_values,
            "n_candidates": self.n_candidates,
            "level": self.level,
            "uniform": self.uniform,
            "ks": self.ks.as_dict(),
            "mean_z": self.mean_z,
            "mean_p_value": self.mean_p,
            "ranks_chi_square": self.ranks.as_dict(),
            "problems": list(self.problems),
        }


def discrete_uniformity(
    pvalues: Sequence[float], n: int, *, level: float = 1e-3, seed: int = 0
) -> UniformityReport:
    """Check rank p-values against the exact uniform on ``{1/n, ..., 1}``: values on the grid ``k/n``
    with ``1 <= k <= n``, a randomized (exact) KS test, a z-test of the mean with exact moments and a
    chi-square test of the ranks. Loose (``level`` 1e-3 each) yet an off-by-one rank fails it outright
    (values 0 or above 1 leave the grid) and, with ``n`` around 10, also on the mean and the KS test."""
    ps = np.asarray(pvalues, dtype=float)
    ranks = np.round(ps * n).astype(int)
    problems = []
    outside = int(np.count_nonzero((ranks < 1) | (ranks > n)))
    if outside:
        problems.append(f"{outside} p-value(s) outside {{1/n..1}} (rank 0 or above n)")
    off = int(np.count_nonzero(np.abs(ps * n - ranks) > 1e-6))
    if off:
        problems.append(f"{off} p-value(s) not of the form rank/n")
    ks = ks_uniformity(ps, n_candidates=n, level=level, seed=seed)
    z, mp = mean_test(ps, n)
    rk = rank_uniformity(ranks, n, level=level)
    return UniformityReport(
        n_values=int(ps.size),
        n_candidates=n,
        level=level,
        ks=ks,
        mean_z=z,
        mean_p=mp,
        ranks=rk,
        problems=problems,
    )
