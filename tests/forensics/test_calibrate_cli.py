"""`tracemark calibrate`: tables, JSON and plot; exit 0 on PASS, 1 on FAIL, 2 on bad options."""

from __future__ import annotations

import json

import pytest
from tracemark.forensics.calibrate import runner as calibrate_runner
from tracemark.forensics.scoring import PairScore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def app():
    import typer
    from tracemark.cli.investigate import calibrate_command

    a = typer.Typer()
    a.command("calibrate")(calibrate_command)
    a.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    return a


def _runner():
    from typer.testing import CliRunner

    return CliRunner()


SMALL = ["--tiny-models", "1", "--students", "0", "--workers", "1", "--salient-accounts", "0"]


def test_bad_options_exit_2(app):
    for args, fragment in [
        (["--runs", "1"], "--runs must be >= 2"),
        (["--digits", "12"], "--digits must be"),
        (["--alpha", "0.9"], "--alpha must be in"),
        (["--student-epochs", "0"], "--student-epochs must be"),
        (["--context", "no placeholder"], "{trigger}"),
    ]:
        res = _runner().invoke(app, ["calibrate", *args])
        assert res.exit_code == 2 and fragment in res.stderr, (args, res.output)


def test_a_broken_scorer_exits_1(app, monkeypatch, tmp_path):
    def always_rank_one(scorer, scheme, pair, *, beacon, n_samples=None):
        n = scorer.eligible(pair).n
        return PairScore.ranked(pair, mode="white-box", method="broken", n=n, rank=1, n_better=0, n_tied=0)

    monkeypatch.setattr(calibrate_runner, "score_registered_pair", always_rank_one)
    plot = tmp_path / "cal.png"
    res = _runner().invoke(app, ["calibrate", "--runs", "20", "--alpha", "0.1", *SMALL, "--plot", str(plot)])
    assert res.exit_code == 1, res.output
    assert "verdict: FAIL" in res.stdout and "20/20" in res.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_real_small_calibration_exits_0_with_json(app, tmp_path):
    out = tmp_path / "cal.json"
    res = _runner().invoke(
        app,
        [
            "calibrate",
            "--runs",
            "16",
            "--alpha",
            "0.1",
            *SMALL,
            "--plot",
            str(tmp_path / "c.png"),
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "verdict: PASS" in res.stdout and "2 x alpha" in res.stdout
    d = json.loads(out.read_text())
    assert d["status"] == "PASS" and d["overall"]["runs"] == 16 and d["scheme"]["digits"] == 6
    assert d["overall"]["levels"]["0.1"]["upper_one_sided"] <= 0.2
    assert "Holm (family-wise error rate)" in d["family_wise"]
