"""Anytime-valid sequential test: rank e-values, their null mean, the e-process and its stopping rule."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from tracemark.forensics.sequential import (
    EProcess,
    SequentialMonitor,
    calibrated_e,
    harmonic,
    log_calibrated_e,
    log_rank_e,
    rank_e,
)
from tracemark.forensics.stats import StatsError


def test_harmonic_numbers_exact_and_asymptotic():
    assert harmonic(1) == pytest.approx(1.0, rel=1e-13)
    assert harmonic(4) == pytest.approx(25 / 12, rel=1e-13)
    exact_10 = float(sum(Fraction(1, k) for k in range(1, 11)))
    assert harmonic(10) == pytest.approx(exact_10, rel=1e-13)
    # the asymptotic branch (n > 10^4) agrees with a correctly rounded sum
    for n in (10_001, 123_457, 1_000_000):
        direct = math.fsum(1.0 / k for k in range(1, n + 1))
        assert harmonic(n) == pytest.approx(direct, rel=1e-13)
        assert harmonic(n) >= direct  # an upper bound: the e-value never exceeds the exact one
    # far beyond any sum: ln n + gamma dominates
    assert harmonic(10**9) == pytest.approx(math.log(1e9) + 0.5772156649015329 + 5e-10, rel=1e-13)
    with pytest.raises(StatsError):
        harmonic(0)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 10_000, 20_000])
def test_rank_e_has_null_mean_exactly_one(n):
    # exact: E[e] = (1/N) sum_r N / (r H_N) = 1 (floating point: within the 1e-14 margin, never above)
    mean = math.fsum(rank_e(r, n) for r in range(1, n + 1)) / n
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert mean <= 1.0 + 1e-15
    # and the same with exact rationals for a small N
    if n <= 100:
        h = sum(Fraction(1, k) for k in range(1, n + 1))
        assert sum(Fraction(n, 1) / (r * h) for r in range(1, n + 1)) / n == 1


def test_rank_e_is_decreasing_and_conservative_ranks_have_mean_at_most_one():
    n = 50
    es = [rank_e(r, n) for r in range(1, n + 1)]
    assert all(a > b for a, b in zip(es, es[1:], strict=False))
    # conservative ranks r = 1 + #better + #tied: candidates in tie blocks of 5 all get the block's worst rank
    ranks = [5 * ((r - 1) // 5 + 1) for r in range(1, n + 1)]
    assert all(sum(x <= k for x in ranks) <= k for k in range(1, n + 1))  # super-uniform
    # each block of 5 has mean e = 1 / (b H_50): the whole mean is H_10 / H_50 ~ 0.65 < 1
    assert np.mean([rank_e(r, n) for r in ranks]) == pytest.approx(harmonic(10) / harmonic(50), rel=1e-12)
    assert harmonic(10) / harmonic(50) < 0.66


def test_rank_e_rejects_bad_input_with_one_line_messages():
    for rank, n in [(0, 10), (11, 10), (1, 0), (1.0, 10), (True, 10), (1, "10")]:
        with pytest.raises(StatsError) as err:
            rank_e(rank, n)
        assert "\n" not in str(err.value)
    assert rank_e(np.int64(3), np.int64(10)) == pytest.approx(rank_e(3, 10))
    assert isinstance(StatsError("x"), ValueError)


def test_design_point_two_top_ranks_cross_k_over_alpha_for_a_thousand_accounts():
    k_accounts, alpha = 1000, 1e-3
    h = harmonic(10**6)
    assert h == pytest.approx(14.392726722864, rel=1e-11)
    mon = SequentialMonitor(accounts=[f"acct{i}" for i in range(k_accounts)], alpha=alpha)
    assert mon.threshold == pytest.approx(1e6)
    assert not mon.update("acct7", 1, 10**6)
    assert mon.update("acct7", 1, 10**6)
    e = mon.processes["acct7"].e_value
    assert e == pytest.approx((10**6 / h) ** 2, rel=1e-12)
    assert 4.7e9 < e < 4.9e9
    assert mon.stopped_at == 2 and mon.stopped_account == "acct7" and mon.crossed == ["acct7"]
    # the old mixture calibrator: 2.7e7 at N = 10^6, and at N = 10^4 it cannot reach K / alpha (1.4e4)
    # where the rank e-value just does (1.04e6)
    assert calibrated_e(1e-6) ** 2 < e / 100
    assert calibrated_e(1e-4) ** 2 < 1e6 < rank_e(1, 10**4) ** 2


def test_e_process_product_and_anytime_p():
    proc = EProcess("a")
    for rank, n in ((1, 10_000), (1, 10_000), (9_000, 10_000)):
        proc.update(rank, n)
    top = 10_000 / harmonic(10_000)
    assert proc.log10_e == pytest.approx(math.log10(top * top * 10_000 / (9_000 * harmonic(10_000))))
    assert proc.anytime_p == pytest.approx(1 / top**2, rel=1e-12)  # sup of the path, not the end
    assert proc.steps == 3 and len(proc.history) == 3
    with pytest.raises(StatsError):
        proc.update(0, 10)
    assert proc.steps == 3  # a rejected update leaves the process unchanged


def test_monitor_rejects_unknown_accounts_and_bad_alpha():
    with pytest.raises(StatsError):
        SequentialMonitor(accounts=["a"], alpha=1.5)
    with pytest.raises(StatsError):
        SequentialMonitor(accounts=[], alpha=0.01)
    mon = SequentialMonitor(accounts=["a"], alpha=0.01)
    with pytest.raises(StatsError):
        mon.update("b", 1, 10)
    assert mon.as_dict()["calibrator"].startswith("e(r, N) = N / (r H_N)")


def test_ville_null_e_processes_cross_one_over_alpha_at_most_alpha_of_the_time():
    # 4000 null e-processes, 60 pairs each, mixed N; monitored after every pair (optional stopping)
    rng = np.random.default_rng(20240611)
    alpha, trials, steps = 0.05, 4000, 60
    ns = rng.choice([5, 20, 100, 1000], size=(trials, steps))
    ranks = rng.integers(1, ns + 1)
    log_e = np.vectorize(log_rank_e)(ranks, ns)
    paths = np.cumsum(log_e, axis=1)
    crossed = np.mean(paths.max(axis=1) >= math.log(1 / alpha))
    assert 0 < crossed <= alpha  # Ville: P(sup E >= 1/alpha) <= alpha (the observed rate is ~0.02)
    # and with the rank e-value under the alternative (ranks near the top) the same test has power
    strong = np.cumsum(np.vectorize(log_rank_e)(np.minimum(ranks, 2), ns), axis=1)
    assert np.mean(strong.max(axis=1) >= math.log(1 / alpha)) > 0.99


def test_monitor_false_alarm_rate_under_h0_with_continuous_monitoring():
    # many accounts, many pairs each, optional stopping at every step: P(any crossing) <= alpha
    rng = np.random.default_rng(0)
    alpha, n = 0.05, 100
    crossings = 0
    trials = 400
    for _ in range(trials):
        mon = SequentialMonitor(accounts=[f"a{i}" for i in range(5)], alpha=alpha)
        for _step in range(40):
            for a in mon.accounts:
                if mon.update(a, int(rng.integers(1, n + 1)), n):
                    break
            if mon.stopped_at is not None:
                break
        crossings += mon.stopped_at is not None
    assert crossings / trials <= alpha


def test_old_mixture_calibrator_is_still_a_valid_e_value():
    for n in (2, 10, 1000):
        assert np.mean([calibrated_e(k / n) for k in range(1, n + 1)]) <= 1.0
    assert calibrated_e(1e-4) == pytest.approx(117.76, rel=1e-3)
    assert math.isfinite(log_calibrated_e(1e-300))
    with pytest.raises(StatsError):
        calibrated_e(0.0)
