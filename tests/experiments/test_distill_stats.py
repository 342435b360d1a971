"""The distillation table's statistics: exact paired tests, Holm, bootstrap intervals, gain ratios."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests
from tracemark.experiments.distill_stats import holm, paired_permutation_test, row_stats, table_stats
from tracemark.foundation.errors import InvalidInput


def test_paired_test_is_exact_for_few_discordant_problems():
    row = [[True] * 10 + [False] * 30]
    ref = [[False] * 40]
    diff, p, wins, losses = paired_permutation_test(row, ref)
    assert diff == pytest.approx(10 / 40) and (wins, losses) == (10, 0)
    assert p == pytest.approx(2 / 2**10)  # only all-plus and all-minus are as extreme
    assert paired_permutation_test(ref, ref)[1] == 1.0


def test_paired_test_averages_seeds_within_a_problem():
    # Seeds disagree on every problem: seed means are 0.5 vs 0.5, no evidence of a difference.
    row = [[True, False] * 20, [False, True] * 20]
    ref = [[False, True] * 20, [True, False] * 20]
    diff, p, _, _ = paired_permutation_test(row, ref)
    assert diff == 0 and p == 1.0


def test_paired_test_monte_carlo_for_many_problems_detects_a_large_gap():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 200)) < 0.3
    row = rng.random((3, 200)) < 0.6
    diff, p, _, _ = paired_permutation_test(row, ref, permutations=2000)
    assert diff > 0.2 and p == pytest.approx(1 / 2001)
    _, p_null, _, _ = paired_permutation_test(rng.random((3, 200)) < 0.3, ref, permutations=2000)
    assert p_null > 0.01


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40),
)
def test_paired_test_is_symmetric_and_a_probability(pairs):
    a = [[x for x, _ in pairs]]
    b = [[y for _, y in pairs]]
    d1, p1, w1, l1 = paired_permutation_test(a, b, permutations=500)
    d2, p2, w2, l2 = paired_permutation_test(b, a, permutations=500)
    assert 0 < p1 <= 1 and p1 == pytest.approx(p2) and d1 == pytest.approx(-d2)
    assert (w1, l1) == (l2, w2)


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.001]
    adjusted, reject = holm(p, 0.05)
    want_reject, want_adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert adjusted == pytest.approx(list(want_adjusted))
    assert reject == list(want_reject)


def test_bootstrap_interval_covers_the_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(1)
    problems = rng.integers(0, 200, (2000, 200))
    seeds = rng.integers(0, 3, (2000, 3))
    steady = np.tile(rng.random(200) < 0.4, (3, 1))
    spread = np.stack([rng.random(200) < q for q in (0.1, 0.4, 0.7)])
    a = row_stats("steady", steady, problems, seeds)
    b = row_stats("spread", spread, problems, seeds)
    assert a.ci95[0] < a.accuracy < a.ci95[1]
    assert b.ci95[1] - b.ci95[0] > a.ci95[1] - a.ci95[0]
    assert a.per_seed[0] == a.per_seed[1] == a.per_seed[2]


def test_table_gains_ratios_tests_and_holm():
    n = 200
    base = [[i < 20 for i in range(n)]]  # 10%
    clean = [[i < 120 for i in range(n)]] * 3  # 60%
    weak = [[i < 30 for i in range(n)]] * 3  # 15%
    stats = table_stats(
        {"base": base, "clean": clean, "weak": weak},
        base="base",
        clean="clean",
        references={"clean": ["base"], "weak": ["base", "clean"]},
        bootstrap=500,
        permutations=2000,
    )
    assert stats["clean"].gain == pytest.approx(0.5)
    assert stats["weak"].gain_ratio == pytest.approx(0.05 / 0.5)
    low, high = stats["weak"].gain_ratio_ci95
    assert low <= 0.1 <= high and high < 0.5
    tests = {t.reference: t for t in stats["weak"].tests}
    assert tests["clean"].significant and tests["clean"].difference == pytest.approx(-0.45)
    assert tests["base"].p_holm >= tests["base"].p_value
    assert stats["clean"].tests[0].significant


def test_table_rejects_rows_on_different_problems():
    with pytest.raises(InvalidInput, match="same problems"):
        table_stats({"base": [[True] * 3], "clean": [[True] * 4]}, base="base", clean="clean", references={})
    with pytest.raises(InvalidInput, match="needs the rows"):
        table_stats({"base": [[True]]}, base="base", clean="clean", references={})
