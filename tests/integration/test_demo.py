"""The demo's quick path end to end: distiller detected and attributed, control not detected."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_demo_reaches_the_right_verdicts(tmp_path):
    from tracemark.experiments.demo_settings import QUICK
    from tracemark.experiments.scenario import DISTILLER, run_demo

    result = run_demo(QUICK, workdir=tmp_path / "demo", seed=0)
    by_student = {v.student: v for v in result.verdicts}
    distilled, control = by_student["distilled"], by_student["control"]
    assert result.answers_preserved == result.traces
    assert result.watermarked_traces > 0
    assert distilled.verdict == "detected" and distilled.attributed_account == DISTILLER
    assert distilled.p_value <= QUICK.alpha
    assert control.verdict == "not_detected"
    assert distilled.report_valid and control.report_valid
    assert (tmp_path / "demo" / "reports" / "distilled.html").read_text().startswith("<!DOCTYPE html>")
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["correct"] is True
