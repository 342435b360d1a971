"""Calibration on clean models: >= 200 null runs keep the false-alarm rate within alpha and the p-values
uniform; an off-by-one in the rank is caught."""

from __future__ import annotations

import pytest
from tracemark.forensics import stats
from tracemark.forensics.calibrate import CalibrationError, CalibrationParams, run_calibration

BARE = ("{trigger}",)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def calibration():
    return run_calibration(CalibrationParams(runs=200, n_models=4, contexts=BARE, alpha=1e-3, seed=0))


@pytest.mark.slow
def test_two_hundred_null_runs_are_calibrated(calibration, tmp_path):
    r = calibration
    assert r.n_runs >= 200 and len(r.models) == 4
    assert {m["model"].split(",")[0] for m in r.models} == {
        "tiny(h=32",
        "tiny(h=64",
        "tiny(h=96",
        "tiny(h=128",
    }
    # false-alarm rate <= alpha within its Clopper-Pearson interval
    assert r.false_alarm_ci[0] <= r.alpha
    assert r.false_alarm_ci == pytest.approx(stats.clopper_pearson(r.false_alarms, r.n_runs))
    for level, v in r.levels.items():  # measurable levels: the rate is compatible with the level
        assert v["ci"][0] <= level
    # uniformity: per-account (Fisher) p-values, per-pair p over all N and among D+1 = 10 decoys
    assert r.account_ks.uniform and r.pair_uniformity.uniform and r.decoy_uniformity.uniform
    assert r.pair_uniformity.n_candidates == 10_000 and r.decoy_uniformity.n_candidates == 10
    assert r.passed
    assert all(1 <= rank <= 10_000 for run in r.runs for rank in run.ranks)
    # table and plot
    from rich.console import Console

    console = Console(record=True, width=150)
    console.print(r.table())
    text = console.export_text()
    assert "false alarms at alpha=0.001" in text and "PASS" in text
    png = r.plot(tmp_path / "cal.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = r.as_dict()
    assert d["runs"] == r.n_runs and d["passed"] is True


@pytest.mark.slow
@pytest.mark.parametrize("shift", [+1, -1])
def test_an_off_by_one_rank_is_caught(monkeypatch, shift):
    monkeypatch.setattr(stats, "rank_pvalue", lambda rank, n: (rank + shift) / n)
    r = run_calibration(CalibrationParams(runs=100, n_models=1, contexts=BARE, seed=1))
    assert not r.passed
    assert not r.decoy_uniformity.uniform
    assert r.decoy_uniformity.problems  # values off the grid {1/n..1}
    assert r.decoy_uniformity.mean_p < 1e-3  # the mean moves by 1/10: caught on moments too


def test_bad_calibration_parameters():
    for kwargs, fragment in [
        ({"runs": 0}, "runs"),
        ({"runs": 1}, "runs"),
        ({"alpha": 2.0}, "alpha"),
        ({"decoy_check": 0}, "decoy_check"),
        ({"decoy_check": 10_000}, "decoy_check"),
        ({"n_models": 0}, "n_models"),
        ({"contexts": ["no placeholder"]}, "{trigger}"),
    ]:
        with pytest.raises(CalibrationError, match=fragment) as info:
            CalibrationParams(**kwargs)
        assert info.value.field == fragment or fragment == "{trigger}"
