"""Exact rank-product combination: lattice counts against brute force, validity (super-uniform p-values),
the Fisher bound, the null curve, and what each multiplicity correction controls."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracemark.forensics import lattice, stats


def brute_count(t: int, ns) -> int:
    return sum(1 for r in itertools.product(*(range(1, n + 1) for n in ns)) if math.prod(r) <= t)


def brute_p(ranks, ns) -> Fraction:
    return Fraction(brute_count(math.prod(ranks), ns), math.prod(ns))


# --- the lattice count ---------------------------------------------------------------------------
def test_count_products_matches_brute_force_for_small_boxes():
    rng = random.Random(7)
    for _ in range(300):
        m = rng.randint(1, 4)
        ns = [rng.randint(1, 30 if m <= 2 else 9) for _ in range(m)]
        t = rng.randint(0, math.prod(ns) + 2)
        assert lattice.count_products(t, ns) == brute_count(t, ns), (t, ns)


def test_count_products_numpy_and_python_paths_agree_with_a_direct_sum():
    rng = random.Random(11)
    for _ in range(20):
        n1, n2 = rng.randint(200, 5000), rng.randint(200, 5000)
        t = rng.randint(1, n1 * n2)
        direct = sum(min(n2, t // a) for a in range(1, n1 + 1))
        assert lattice.count_products(t, [n1, n2]) == direct
    # beyond int64 the Python-integer path is used: a 2-d box with sides 10^10 and a small product
    assert lattice.count_products(12, [10**10, 10**10]) == brute_count(12, [12, 12])
    big = 10**12
    assert lattice.count_products(big * big, [big, big]) == big * big  # saturated: the whole box


@pytest.mark.parametrize(
    "t, ns",
    [(10**6, [10**6] * 3), (27 * 10**6, [10**6] * 3), (8 * 10**9, [10**4] * 3), (10**11, [10**6, 10**6])],
)
def test_work_estimate_tracks_the_metered_work(t, ns):
    # the estimate decides (deterministically) between the exact count and the Fisher bound, so hopeless
    # counts are refused before they start; for two and three sides it is within a factor 2 of the work
    meter = lattice.WorkMeter(10**12)
    lattice.count_products(t, ns, meter=meter)
    est = lattice.estimate_work(t, ns)
    assert meter.used / 2 <= est <= 2 * meter.used
    refused = lattice.WorkMeter(est // 4)
    with pytest.raises(lattice.WorkExceeded):
        lattice.count_products(t, ns, meter=refused)
    assert refused.used == 0


def test_count_products_stops_past_its_work_budget():
    with pytest.raises(lattice.WorkExceeded):
        lattice.count_products(10**17, [10**6] * 3, max_work=10_000)
    meter = lattice.WorkMeter(10**9)
    lattice.count_products(10**9, [10**6, 10**6], meter=meter)
    assert 0 < meter.used < 10**9


# --- combine_ranks: exactness ------------------------------------------------------------------
@pytest.mark.parametrize(
    "ns",
    [(7,), (13, 5), (1, 9), (6, 6, 6), (3, 8, 5), (4, 2, 5, 3), (6, 1, 4, 4)],
)
def test_combine_ranks_equals_enumeration_of_the_null(ns):
    for ranks in itertools.product(*(range(1, n + 1) for n in ns)):
        res = stats.combine_ranks(ranks, ns)
        assert res.method == "exact"
        assert res.log_p == pytest.approx(math.log(brute_p(ranks, ns)), abs=1e-12)
        assert res.statistic == pytest.approx(sum(math.log(r / n) for r, n in zip(ranks, ns, strict=True)))
        assert res.m == len(ns)


@pytest.mark.parametrize("ns", [(5, 7), (4, 4, 6), (3, 5, 2, 4), (12,)])
def test_exact_p_is_super_uniform_over_the_whole_null(ns):
    # enumerate every outcome of the null: P(p <= x) <= x for every x (with equality at attained values)
    box = math.prod(ns)
    ps = sorted(
        Fraction(round(math.exp(stats.combine_ranks(r, ns).log_p) * box), box)
        for r in itertools.product(*(range(1, n + 1) for n in ns))
    )
    for x in sorted(set(ps)):
        assert Fraction(sum(p <= x for p in ps), box) <= x
    for x in (Fraction(1, 1000), Fraction(1, 7), Fraction(1, 2), Fraction(99, 100)):
        assert Fraction(sum(p <= x for p in ps), box) <= x


def test_exact_p_stays_valid_for_conservative_ranks_with_ties():
    # conservative ranks: tie blocks of 3 among n = 9 candidates all get the block's worst rank
    ns = (9, 9)
    tie_rank = {r: 3 * ((r - 1) // 3 + 1) for r in range(1, 10)}
    outcomes = [(tie_rank[a], tie_rank[b]) for a in range(1, 10) for b in range(1, 10)]
    ps = [stats.combine_ranks(o, ns).p_value for o in outcomes]
    for x in sorted(set(ps)) + [0.01, 0.1, 0.5]:
        assert sum(p <= x + 1e-12 for p in ps) / len(ps) <= x + 1e-12


def test_strong_evidence_two_top_ranks_among_a_million():
    res = stats.combine_ranks([1, 1], [10**6, 10**6])
    assert res.method == "exact"
    assert res.log_p == pytest.approx(-12 * math.log(10), rel=1e-15)
    assert res.log10_p == pytest.approx(-12.0, rel=1e-15)
    # Fisher's chi-square(4) overstates it by ~30x: its bound is 10^-10.54
    assert stats.fisher_combine([1e-6, 1e-6]).log10_p == pytest.approx(-10.5432, abs=1e-4)
    d = res.as_dict()
    assert d["method"] == "exact" and d["m"] == 2 and d["log10_p"] == pytest.approx(-12.0)


def test_mid_ranks_among_a_million_are_exact_and_fast():
    # measured on the 2-core development machine: 6-55 ms (the hyperbola method sums ~10^6 int64 terms)
    n, r = 10**6, 500_000
    res = stats.combine_ranks([r, r], [n, n])
    assert res.method == "exact"
    t = r * r
    a = np.arange(1, n + 1, dtype=np.int64)
    direct = int(np.minimum(n, np.int64(t) // a).sum())
    assert res.log_p == pytest.approx(math.log(direct) - 2 * math.log(n), rel=1e-14)
    # x (1 - ln x) with x = 1/4: the continuous limit
    assert res.p_value == pytest.approx(0.25 * (1 + math.log(4)), rel=1e-5)


def test_fisher_bound_fallback_when_the_count_is_too_expensive():
    ranks, ns = [400_000, 300_000, 500_000], [10**6] * 3
    res = stats.combine_ranks(ranks, ns)
    assert res.method == "fisher-bound"
    assert res.log_p == pytest.approx(stats.fisher_combine([0.4, 0.3, 0.5]).log_p, rel=1e-12)
    # a small budget forces the bound where the exact value is known: the bound is above it
    exact = stats.combine_ranks([3, 5, 2], [40, 40, 40])
    bound = stats.combine_ranks([3, 5, 2], [40, 40, 40], max_work=1)
    assert exact.method == "exact" and bound.method == "fisher-bound"
    assert exact.log_p < bound.log_p


def test_mixed_candidate_counts():
    ns = [10**6, 10**4, 999_983]
    res = stats.combine_ranks([2, 1, 3], ns)
    assert res.method == "exact"
    # prod R <= 6: count the tuples directly (each side is larger than 6)
    assert res.log_p == pytest.approx(math.log(brute_count(6, [6, 6, 6])) - sum(map(math.log, ns)), rel=1e-14)


def test_combine_ranks_rejects_bad_input():
    for ranks, ns in [
        ([], []),
        ([1, 2], [3]),
        ([0], [5]),
        ([6], [5]),
        ([1.0], [5]),
        ([True], [5]),
        ([1], [0]),
    ]:
        with pytest.raises(stats.StatsError) as err:
            stats.combine_ranks(ranks, ns)
        assert "\n" not in str(err.value)
    assert stats.combine_ranks([np.int64(2)], [np.int64(5)]).p_value == pytest.approx(0.4)


# --- properties ------------------------------------------------------------------------------
@st.composite
def rank_tuples(draw):
    m = draw(st.integers(1, 4))
    ns = draw(st.lists(st.integers(1, 60 if m <= 2 else 12), min_size=m, max_size=m))
    ranks = [draw(st.integers(1, n)) for n in ns]
    return ranks, ns


@settings(max_examples=150, deadline=None)
@given(rank_tuples(), st.data())
def test_properties_range_monotone_and_below_fisher(case, data):
    ranks, ns = case
    res = stats.combine_ranks(ranks, ns)
    assert res.method == "exact"
    assert 0 < res.p_value <= 1
    assert res.p_value == pytest.approx(float(brute_p(ranks, ns)), rel=1e-12)
    fisher = stats.fisher_combine([r / n for r, n in zip(ranks, ns, strict=True)])
    assert res.log_p <= fisher.log_p + 1e-12
    i = data.draw(st.integers(0, len(ns) - 1))
    if ranks[i] < ns[i]:
        worse = list(ranks)
        worse[i] += 1
        assert stats.combine_ranks(worse, ns).log_p >= res.log_p


# --- the null curve --------------------------------------------------------------------------
def test_null_curve_is_the_exact_null_cdf():
    ns = (6, 9, 4)
    curve = stats.rank_combination_null_curve(ns, points=25)
    box = math.prod(ns)
    assert curve[0] == pytest.approx((-math.log10(box), -math.log10(box)))
    assert curve[-1] == (0.0, 0.0)
    xs = [x for x, _ in curve]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    for log10_x, log10_p in curve:
        t = round(10**log10_x * box)
        assert log10_p == pytest.approx(math.log10(brute_count(t, ns) / box), abs=1e-12)
        assert log10_p >= log10_x - 1e-12  # P(prod R/n <= x) >= x: the product is not uniform
    # large boxes: still exact where computed, within the budget, and ends at (0, 0)
    big = stats.rank_combination_null_curve([10**6, 10**6], points=40)
    assert len(big) == 40 and big[-1] == (0.0, 0.0)
    x, p = big[len(big) // 2]
    expected = math.log10(lattice.count_products(round(10 ** (x + 12)), [10**6, 10**6])) - 12
    assert p == pytest.approx(expected, abs=1e-12)
    with pytest.raises(stats.StatsError):
        stats.rank_combination_null_curve([10], points=1)


# --- multiplicity wording ------------------------------------------------------------------------
def test_correction_meaning_says_what_each_correction_controls():
    for method in ("holm", "bonferroni"):
        assert "family-wise error rate" in stats.correction_meaning(method)
    bh = stats.correction_meaning("fdr_bh")
    assert "false discovery rate" in bh and "does not control the family-wise" in bh
    assert all("\n" not in stats.correction_meaning(m) for m in stats.CORRECTIONS)
    with pytest.raises(stats.StatsError):
        stats.correction_meaning("sidak")


def test_conservative_rank_counts_ties_against_the_target():
    assert stats.conservative_rank(0, 0) == 1
    assert stats.conservative_rank(3, 2) == 6
    with pytest.raises(stats.StatsError):
        stats.conservative_rank(-1, 0)
