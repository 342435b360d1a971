"""Calibration: the PASS rule on synthetic counts, the verdict and family-wise versions, a real small
calibration on tiny models (PASS), and a deliberately broken scorer (always rank 1) that FAILs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from scipy import stats as sps
from tracemark.forensics.calibrate import (
    CalibrationError,
    CalibrationParams,
    StudentRecipe,
    min_runs,
    rate_check,
    run_calibration,
)
from tracemark.forensics.calibrate import runner as calibrate_runner
from tracemark.forensics.calibrate.summary import NullFamily, family_wise, ks_smaller, verdict
from tracemark.forensics.scoring import PairScore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the rule ----------------------------------------------------------------------------------------
def test_pass_rule_on_synthetic_counts():
    ok = rate_check(12, 1000, 0.01)
    assert ok.passed and ok.status == "pass"
    assert ok.upper == pytest.approx(sps.beta.ppf(0.95, 13, 988), rel=1e-9)  # one-sided 95% CP bound
    assert 0.019 < ok.upper <= 0.02
    bad = rate_check(40, 1000, 0.01)
    assert not bad.passed and bad.status == "FAIL"
    assert bad.upper == pytest.approx(sps.beta.ppf(0.95, 41, 960), rel=1e-9)
    # the two-sided interval is reported alongside and contains the rate
    assert bad.ci[0] < bad.rate < bad.ci[1]
    # every count from 0 to 29 of 1000: the rule is exactly the one-sided bound against 2 alpha
    for k in range(0, 30):
        c = rate_check(k, 1000, 0.01)
        assert c.passed == (sps.beta.ppf(0.95, k + 1, 1000 - k) <= 0.02)
    # too few runs cannot pass, whatever happens
    assert min_runs(0.01) == 149 and min_runs(0.05) == 29
    assert rate_check(0, 148, 0.01).status == "too few runs"
    assert rate_check(0, 149, 0.01).status == "pass"
    assert rate_check(5, 20, 0.01).status == "FAIL"  # demonstrably above alpha (CI lower bound 0.087)
    assert rate_check(1, 100, 0.001).status == "too few runs"  # above 2 alpha, but not demonstrably


def _tests(pvalues, model="m", family="tiny"):
    return [
        SimpleNamespace(
            p_value=p, log10_p=0.0, ranks=[1, 1], ns=[10, 10], censored=0, model=model, family=family
        )
        for p in pvalues
    ]


def test_verdict_pass_fail_inconclusive_and_ks():
    levels = (0.001, 0.01, 0.05, 0.1)
    grid = [(i + 0.5) / 1000 for i in range(1000)]  # exactly uniform: 10 false alarms at 0.01
    fam = NullFamily.of("tiny", _tests(grid), levels, 0.95)
    assert fam.checks[0.01].k == 10
    assert verdict(fam, [fam], 0.01, [])[0] == "PASS"
    small = NullFamily.of("tiny", _tests(grid[::10]), levels, 0.95)  # 100 runs
    status, reasons = verdict(small, [small], 0.01, [])
    assert status == "INCONCLUSIVE" and "need >= 149" in reasons[0]
    # too many small p-values: the rate fails and so does the one-sided KS
    skewed = NullFamily.of("tiny", _tests([p / 3 for p in grid]), levels, 0.95)
    status, reasons = verdict(skewed, [skewed], 0.01, [])
    assert status == "FAIL" and any("KS" in r for r in reasons)
    # a valid rate overall does not hide a failing family with enough runs
    good = NullFamily.of("tiny", _tests([1.0] * 800), levels, 0.95)
    students = NullFamily.of("student", _tests([0.005] * 10 + [1.0] * 190, family="student"), levels, 0.95)
    overall = NullFamily.of("overall", _tests([1.0] * 800 + [0.005] * 10 + [1.0] * 190), levels, 0.95)
    status, reasons = verdict(overall, [good, students], 0.01, [])
    assert status == "FAIL" and reasons[0].startswith("student:")
    assert verdict(good, [good], 0.01, ["1 account(s) with a rank outside 1..n"])[0] == "FAIL"


def test_ks_is_one_sided():
    grid = [(i + 0.5) / 500 for i in range(500)]
    assert ks_smaller(grid)["p_value"] > 0.5
    assert ks_smaller([1.0] * 500)["statistic"] == 0.0  # super-uniform (censored) nulls pass
    assert ks_smaller([min(1.0, 2 * p) for p in grid])["p_value"] > 0.5  # conservative: passes
    assert ks_smaller([p / 2 for p in grid])["p_value"] < 1e-6  # anti-conservative: caught


def test_family_wise_holm_and_bh():
    ps = [1.0] * 39 + [1e-4]  # two families of 20 for one model; the second holds p = 1e-4
    fw = family_wise(_tests(ps), 20, 0.01, 0.95)
    assert (fw["holm"].k, fw["holm"].n) == (1, 2)  # 1e-4 <= 0.01 / 20
    assert (fw["fdr_bh"].k, fw["fdr_bh"].n) == (1, 2)
    fw = family_wise(_tests([1.0] * 19 + [1e-3] + [1.0] * 5), 20, 0.01, 0.95)
    assert (fw["holm"].k, fw["holm"].n) == (0, 1)  # 1e-3 > 0.01 / 20; the 5 left over make no family
    assert family_wise(_tests([1.0] * 5), 20, 0.01, 0.95)["holm"] is None


def test_bad_calibration_parameters():
    for kwargs, fld in [
        ({"runs": 1}, "runs"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 0.7}, "alpha"),
        ({"tiny_models": 0, "students": 0}, "tiny_models"),
        ({"runs": 3, "tiny_models": 4, "students": 0}, "runs"),
        ({"workers": 0}, "workers"),
        ({"family_size": 1}, "family_size"),
        ({"digits": 12}, "digits"),
        ({"pairs_per_account": 0}, "pairs_per_account"),
        ({"contexts": ["no placeholder"]}, "contexts"),
    ]:
        with pytest.raises(CalibrationError) as info:
            CalibrationParams(**kwargs)
        assert info.value.field == fld, (kwargs, info.value.field)
    for kwargs, fld in [({"epochs": 0}, "student_epochs"), ({"accounts": 0}, "student_accounts")]:
        with pytest.raises(CalibrationError) as info:
            StudentRecipe(**kwargs)
        assert info.value.field == fld
    assert CalibrationParams(runs=10, alpha=0.02).levels == (0.001, 0.01, 0.02, 0.05, 0.1)
    assert CalibrationParams().split_runs(6) == [167, 167, 167, 167, 166, 166]


# --- real runs ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_small_real_calibration_on_tiny_models_passes(tmp_path):
    params = CalibrationParams(runs=60, tiny_models=2, students=0, alpha=0.05, salient_accounts=1, seed=3)
    r = run_calibration(params, workdir=tmp_path)
    assert r.status == "PASS", r.reasons
    assert r.n_runs == 60 and [f.name for f in r.families] == ["tiny"]
    fresh = [t for t in r.tests if t.kind == "fresh"]
    assert len(fresh) == 60 and {t.model for t in fresh} == {m["name"] for m in r.models}
    n_pairs = 60 * params.pairs_per_account
    assert r.overall.pairs == n_pairs
    # the investigation's procedure at 6 digits: exact trie ranks among the eligible candidates, or censored
    assert all(set(t.methods) <= {"trie-exact", "trie-censored"} for t in fresh)
    assert all(900_000 < n <= 1_000_000 for t in fresh for n in t.ns)
    assert all(t.ranks == t.ns for t in fresh if t.censored == len(t.ranks))  # censored: rank n, p = 1
    assert r.overall.checks[0.05].upper <= 0.1
    # JSON, tables and plot
    d = json.loads(json.dumps(r.as_dict()))
    assert d["status"] == "PASS" and d["overall"]["runs"] == 60 and "2 x alpha" in d["rule"]
    assert d["scheme"]["digits"] == 6 and len(d["accounts"]) == len(r.tests)
    from rich.console import Console

    console = Console(record=True, width=200)
    for x in r.tables():
        console.print(x)
    text = console.export_text()
    assert "tiny: 60 random-key null runs" in text and "overall:" in text and "verdict: PASS" in text
    assert "Holm (family-wise error rate)" in text and "BH (false discovery rate)" in text
    assert r.plot(tmp_path / "cal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _always_rank_one(scorer, scheme, pair, *, beacon, n_samples=None):
    n = scorer.eligible(pair).n
    return PairScore.ranked(pair, mode="white-box", method="broken", n=n, rank=1, n_better=0, n_tied=0)


def test_a_scorer_that_always_says_rank_one_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(calibrate_runner, "score_registered_pair", _always_rank_one)
    params = CalibrationParams(runs=40, tiny_models=1, students=0, alpha=0.05, salient_accounts=0)
    r = run_calibration(params, workdir=tmp_path)
    assert r.status == "FAIL" and not r.passed
    assert r.overall.checks[0.05].k == 40
    assert any(reason.startswith("overall: upper bound") for reason in r.reasons)
