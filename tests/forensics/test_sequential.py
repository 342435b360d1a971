"""Anytime-valid sequential test: calibrated e-values and the e-process stopping rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tracemark.forensics.sequential import EProcess, SequentialMonitor, calibrated_e, log_calibrated_e


def test_calibrator_is_a_valid_e_value_for_discrete_rank_pvalues():
    for n in (2, 10, 1000, 10_000):
        mean = np.mean([calibrated_e(k / n) for k in range(1, n + 1)])
        assert mean <= 1.0
    es = [calibrated_e(p) for p in (1e-6, 1e-4, 0.01, 0.3, 0.9, 1.0)]
    assert all(a > b for a, b in zip(es, es[1:], strict=False))  # decreasing in p
    assert calibrated_e(1.0) == pytest.approx(0.5)
    assert calibrated_e(1e-4) == pytest.approx(117.76, rel=1e-3)
    assert math.isfinite(log_calibrated_e(1e-300))
    with pytest.raises(ValueError):
        calibrated_e(0.0)


def test_e_process_product_and_anytime_p():
    proc = EProcess("a")
    for p in (1e-4, 1e-4, 0.5):
        proc.update(p)
    assert proc.log10_e == pytest.approx(math.log10(117.76**2 * calibrated_e(0.5)), rel=1e-3)
    assert proc.anytime_p == pytest.approx(1 / 117.76**2, rel=1e-3)  # sup of the path, not the end
    assert proc.steps == 3 and len(proc.history) == 3


def test_monitor_stops_when_an_account_crosses_k_over_alpha():
    mon = SequentialMonitor(accounts=["a", "b"], alpha=1e-3)
    assert mon.threshold == pytest.approx(2000)
    assert not mon.update("a", 1e-4)  # e ~ 118
    assert not mon.update("b", 0.4)
    assert mon.update("a", 1e-4)  # e ~ 13,900 >= 2,000
    assert mon.stopped_at == 3 and mon.stopped_account == "a" and mon.crossed == ["a"]
    assert mon.as_dict()["accounts"]["a"]["steps"] == 2


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
                if mon.update(a, rng.integers(1, n + 1) / n):
                    break
            if mon.stopped_at is not None:
                break
        crossings += mon.stopped_at is not None
    assert crossings / trials <= alpha
