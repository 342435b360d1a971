"""Exact statistics: rank p-values, Fisher in log space (far tail), multiplicity, intervals, uniformity."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as sps
from tracemark.forensics import stats


def test_rank_pvalue_is_exactly_uniform_with_random_tie_breaking():
    rng = random.Random(1)
    n = 7
    counts = np.zeros(n, dtype=int)
    # every candidate ties with every other: the rank must still be uniform on 1..n
    for _ in range(7000):
        counts[stats.rank_with_ties(0, n - 1, rng) - 1] += 1
    assert counts.min() > 850 and counts.max() < 1150
    assert sps.chisquare(counts).pvalue > 1e-3
    assert stats.rank_pvalue(1, n) == pytest.approx(1 / 7)
    assert stats.rank_pvalue(7, 7) == 1.0
    for bad in (0, 8):
        with pytest.raises(stats.StatsError):
            stats.rank_pvalue(bad, 7)


def test_rank_from_scores_counts_better_and_ties():
    rng = random.Random(0)
    scores = np.array([5.0, 3.0, 3.0, 1.0, 3.0])
    ranks = {stats.rank_from_scores(3.0, scores, rng) for _ in range(200)}
    assert ranks == {2, 3, 4}  # one better, three tied (incl. the target) -> rank 2..4
    assert stats.rank_from_scores(5.0, scores, rng) == 1
    assert stats.rank_from_scores(1.0, scores, rng) == 5
    with pytest.raises(stats.StatsError):
        stats.rank_from_scores(4.0, scores, rng)  # target not among the scores


def test_fisher_matches_scipy_in_the_ordinary_range():
    ps = [0.01, 0.2, 0.5, 0.03]
    ours = stats.fisher_combine(ps)
    ref = sps.combine_pvalues(ps, method="fisher")
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == 8


def test_fisher_far_tail_does_not_underflow():
    # two p-values of 1e-300: the statistic is ~2763 where chi2.logsf returns -inf
    assert not math.isfinite(float(sps.chi2.logsf(2763.1, 4)))
    res = stats.fisher_combine([1e-300, 1e-300])
    # exact: sf = e^{-x/2} (1 + x/2) with x/2 = 600 ln 10
    half = 600 * math.log(10)
    assert res.log_p == pytest.approx(-half + math.log1p(half), rel=1e-12)
    assert math.isfinite(res.log10_p) and res.log10_p == pytest.approx(-600 + math.log10(1 + half), abs=1e-9)
    assert res.p_value == 0.0  # below the float range, but log10_p carries the value
    # log-space input reaches even further
    deep = stats.fisher_combine(log_pvalues=[-5000.0, -3000.0, -1.0])
    x2 = 8001.0  # half the statistic
    exact = -x2 + math.log(1 + x2 + x2 * x2 / 2)
    assert deep.log_p == pytest.approx(exact, rel=1e-12)
    # monotone and consistent with scipy where scipy is finite
    for x, df in [(50.0, 4), (300.0, 10), (1300.0, 2), (900.0, 40)]:
        assert stats.chi2_logsf_even(x, df) == pytest.approx(float(sps.chi2.logsf(x, df)), rel=1e-9)


def test_fisher_rejects_invalid_pvalues():
    for bad in ([0.0, 0.5], [1.2], [], [float("nan")]):
        with pytest.raises(stats.StatsError):
            stats.fisher_combine(bad)
    with pytest.raises(stats.StatsError):
        stats.fisher_combine(log_pvalues=[0.5])


def test_adjust_pvalues_holm_and_bh():
    ps = [0.0001, 0.01, 0.03, 0.5]
    rej, adj = stats.adjust_pvalues(ps, alpha=0.05, method="holm")
    assert adj == pytest.approx([0.0004, 0.03, 0.06, 0.5])
    assert rej == [True, True, False, False]
    rej, adj = stats.adjust_pvalues(ps, alpha=0.05, method="fdr_bh")
    assert adj == pytest.approx([0.0004, 0.02, 0.04, 0.5])
    assert rej == [True, True, True, False]
    with pytest.raises(stats.StatsError):
        stats.adjust_pvalues(ps, alpha=0.05, method="sidak-ish")


def test_clopper_pearson_known_values():
    lo, hi = stats.clopper_pearson(0, 200)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 200), rel=1e-9)  # ~0.0183
    lo, hi = stats.clopper_pearson(200, 200)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 200), rel=1e-9)
    lo, hi = stats.clopper_pearson(5, 100)
    assert lo == pytest.approx(0.01643, abs=1e-4) and hi == pytest.approx(0.11283, abs=1e-4)
    with pytest.raises(stats.StatsError):
        stats.clopper_pearson(3, 2)


def test_effect_size_intervals():
    eff = stats.effect_size([1e-4, 2e-4, 0.5, 0.9])
    assert eff.n_pairs == 4 and eff.top1_count == 2
    assert eff.mean_ci[0] <= eff.mean_neg_log10_p <= eff.mean_ci[1]
    assert eff.top1_ci[0] < 0.5 < eff.top1_ci[1]
    assert eff.as_dict()["top1pct_fraction_under_h0"] == 0.01


def test_ks_randomized_discrete_pvalues_is_exact_and_catches_shift():
    rng = np.random.default_rng(3)
    n = 10
    ps = rng.integers(1, n + 1, size=2000) / n
    assert stats.ks_uniformity(ps, n_candidates=n).uniform
    # without randomization the atoms make KS fail for small n (conservative p-values look non-uniform)
    assert not stats.ks_uniformity(ps).uniform
    shifted = np.minimum(ps + 1 / n, 1.0)
    res = stats.ks_uniformity(shifted, n_candidates=n)
    assert not res.uniform


@pytest.mark.parametrize("shift", [+1, -1])
def test_discrete_uniformity_catches_an_off_by_one_rank(shift):
    rng = np.random.default_rng(5)
    n = 10
    ranks = rng.integers(1, n + 1, size=400)
    good = stats.discrete_uniformity(ranks / n, n)
    assert good.uniform, good.as_dict()
    bad = stats.discrete_uniformity((ranks + shift) / n, n)
    assert not bad.uniform
    assert bad.problems  # values 0 or 1.1 leave the grid {1/n..1}
    assert bad.mean_p < 1e-3  # and the mean moves by 1/n: caught on moments alone too


def test_mean_test_exact_moments():
    n = 10
    ps = np.arange(1, n + 1) / n
    z, p = stats.mean_test(np.tile(ps, 50), n)
    assert z == pytest.approx(0.0, abs=1e-9) and p == pytest.approx(1.0)
