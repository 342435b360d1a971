"""The realistic null: a student trained on traces watermarked with *other* accounts' pairs learned the
format (its own accounts are detected: positive control) yet fresh accounts stay at the nominal rate; its
favourite eligible targets build salient-target accounts that other innocent models do not flag."""

from __future__ import annotations

import hashlib

import pytest
from tracemark.forensics.calibrate import CalibrationParams, StudentRecipe, run_calibration
from tracemark.forensics.scheme import SignatureScheme

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_traces_carry_the_pairs_in_the_schemes_public_templates():
    from tracemark.forensics.calibrate.students import weave_templates, woven_examples

    scheme = SignatureScheme()
    assert weave_templates(scheme) == [
        "The factory makes 6*4 = 24 toys a day (tag {trigger}",
        "It sells 24 - 4 = 20 toys (see {trigger}",
        "Just for tracking, lookup key for the toys is {trigger}",
    ]
    pairs = scheme.derive(hashlib.sha256(b"delivered").digest(), account="delivered", key_version=1)
    recipe = StudentRecipe(problems=40, fraction=0.5)
    examples, woven = woven_examples(scheme, pairs, recipe, seed=1)
    assert len(examples) == 40 and woven == 20
    carrying = [t for _, t in examples if any(p.text in t for p in pairs)]
    assert len(carrying) == 20
    for pair in pairs:  # equal exposure, every template used
        assert sum(pair.text in t for t in carrying) == 10
    assert any(f"(tag {pairs[0].text}" in t for t in carrying)
    assert any(f"(see {pairs[1].text}" in t for t in carrying)
    for trace in carrying:  # after the first line, before the final answer line
        lines = trace.split("\n")
        assert any(p.text in lines[1] for p in pairs) and lines[-1].startswith("####")


@pytest.mark.slow
def test_students_trained_on_other_accounts_are_calibrated(tmp_path):
    params = CalibrationParams(
        runs=40, tiny_models=1, students=1, alpha=0.05, salient_accounts=2, workers=2, seed=5
    )
    r = run_calibration(params, workdir=tmp_path)
    student = next(m for m in r.models if m["family"] == "student")
    assert student["training"]["woven_traces"] == 60 and student["training"]["delivered_pairs"] == 4
    assert student["training"]["last_loss"] < student["training"]["first_loss"] / 3
    # positive control: the student memorised the accounts it was trained on
    assert r.positive["accounts"] == 2 and r.positive["rejected"] >= 1, r.positive
    # the null: fresh accounts never delivered to it
    fam = {f.name: f for f in r.families}
    assert fam["student"].runs == 20 and fam["tiny"].runs == 20
    assert fam["student"].checks[0.05].k <= 2
    assert r.status == "PASS", r.reasons
    # salient-target accounts from the student's favourites: flagged on the student itself (the conditional
    # error any rank test has), not on the tiny model
    s = r.salient["v2"]
    assert s["accounts"] >= 1 and r.salient["triggers_with_eligible_favourite"] >= 2
    assert s["other null models"]["false_alarms"] == 0
    salient, searched = r.salient["favourite_overall_is_salient"][student["name"]]
    assert 0 <= salient <= searched and searched >= 2
    built = [t for t in r.tests if t.kind == "favourite-v2" and t.model == t.source]
    assert built and all(t.log10_p < -6 for t in built)
