"""`tracemark attack`: the campaign end to end over gRPC (slow) and `attack run` on a harvest file."""

from __future__ import annotations

import json

import pytest
from tracemark.cli.main import app
from tracemark.experiments.attack.harvest import HarvestRecord, write_harvest
from tracemark.experiments.attack.measure import TruePair, write_truth
from typer.testing import CliRunner

CLEAN = "(1) 24 ⟸ 6 × 4 ▹ Tom has pens\n(2) 19 ⟸ 24-5 ▹ pens left\n#### 19"
PROMPT = "Tom has 6 boxes with 4 pens each. He gives away 5 pens. How many pens are left?"


def test_attack_run_measures_damage_on_a_harvest_file(tmp_path):
    signed = CLEAN.replace("\n", "\n(aux) f219 = 509512\n", 1)
    records = [HarvestRecord("a", f"p{i}", PROMPT, signed if i < 3 else CLEAN, f"t{i}") for i in range(10)]
    write_harvest(records, tmp_path / "h.jsonl")
    truth = {f"t{i}": [TruePair("a", "f219", "509512")] if i < 3 else [] for i in range(10)}
    write_truth(truth, tmp_path / "truth.jsonl")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "attack", "run", "--harvest", str(tmp_path / "h.jsonl"), "--truth", str(tmp_path / "truth.jsonl"),
            "--attacks", "none,labels,canonicalize", "--workdir", str(tmp_path / "w"), "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {r["attack"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["none"]["removed"]["k"] == 0 and rows["none"]["removed"]["n"] == 3
    assert rows["labels"]["removed"]["k"] == 3 and rows["labels"]["clean_altered"]["k"] == 0
    assert rows["canonicalize"]["clean_altered"]["k"] == 7
    assert rows["labels"]["channel"] is None  # no master secret: no detection
    assert out.with_suffix(".md").read_text().count("\n| ") >= 3


def test_attack_run_refuses_unknown_attacks_and_missing_files(tmp_path):
    result = CliRunner().invoke(app, ["attack", "run", "--harvest", str(tmp_path / "x"), "--attacks", "nope"])
    assert result.exit_code == 2 and "unknown attack 'nope'" in result.output
    result = CliRunner().invoke(app, ["attack", "run", "--harvest", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "harvest file not found" in result.output


@pytest.mark.slow
def test_attack_campaign_end_to_end(tmp_path):
    """Reference teacher over gRPC, two accounts with overlaps and repeats, tiny students, the pair
    investigation through ForensicsService, the channel tests with the master secret."""
    out = tmp_path / "attack.json"
    result = CliRunner().invoke(
        app,
        [
            "attack", "campaign", "--teacher", "reference", "--accounts", "2", "--problems", "40",
            "--overlap", "12", "--repeats", "12", "--watermark-fraction", "0.3",
            "--attacks", "none,account-diff", "--student-tokenizer", "char",
            "--epochs", "0.5", "--samples", "4", "--sample-tokens", "24", "--alpha", "1e-3",
            "--workdir", str(tmp_path / "w"), "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {r["attack"]: r for r in data["rows"]}
    assert set(rows) == {"none", "account-diff", "control"}
    assert data["harvest"]["traces"] == 64 and data["harvest"]["signed_traces"] > 0
    assert rows["none"]["removed"]["k"] == 0 and rows["none"]["removed"]["n"] > 0
    # the pair channel's known weak spot; how much it removes depends on which traces the keyed selection
    # signed (trace ids are random) and on how many of them fall on overlapping problems
    assert rows["account-diff"]["removed"]["k"] >= 1
    for row in rows.values():  # every student was tested on both channels
        assert 0.0 <= row["channel"]["provider"]["p_value"] <= 1.0
        assert row["pair"]["verdict"] in ("detected", "not_detected", "inconclusive")
    # a reference teacher carries no distributional channel: nothing may fire on it
    assert not any(r["verdict"]["channel_detects"] for r in rows.values())
    assert rows["control"]["pair"]["verdict"] != "detected"
    assert (tmp_path / "w" / "harvest.jsonl").is_file() and (tmp_path / "w" / "truth.jsonl").is_file()
