"""The adaptive distiller's countermeasures, and the restructure audit CLI."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tracemark.experiments.countermeasures import (
    COUNTERMEASURES,
    UnknownCountermeasure,
    apply_countermeasure,
    flip_result_first,
    invert_restructure,
    normalise,
    plain_form,
    strip_suspicious,
)
from tracemark.experiments.restructure_audit import main as audit_main
from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.builtin.restructure import restructure
from tracemark.plugins.builtin.restructure_stealth import restructure_stealth

GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"
TRACE = (
    "Okay. Tom has 3 boxes with 12 apples each. So the total is 3 * 12 = 36.\n"
    "He gives away 5: 36 - 5 = 31. Also 2 * 3 = <<2*3=6>>6 and 6 + 1 = <<6+1=7>>7.\n"
    "So the answer is \\boxed{31}."
)
MARKS = re.compile(r"[⟸▹∵∴]|:=|^\(\d+\)", re.MULTILINE)


def test_invert_restructure_recovers_plain_derivations():
    protected = restructure(TRACE)
    assert not plain_form(protected) and MARKS.search(protected)
    inverted = invert_restructure(protected)
    assert not MARKS.search(inverted) and plain_form(inverted)
    assert inverted.splitlines() == [
        "Tom has 3 boxes with 12 apples each",
        "total: 3 × 12 = 36",
        "He gives away 5: 36 - 5 = 31",
        "2 × 3 = 6; 6+1 = 7",
        "So the answer is \\boxed{31}",
    ]
    assert extract_final_answer(inverted) == "31"
    assert invert_restructure("Plain 2 + 2 = 4.\n#### 4") == "Plain 2 + 2 = 4.\n#### 4"


def test_strip_suspicious_drops_inserted_lines_but_never_the_answer():
    text = "(aux) x137 = 4821\nTom has 3 apples.\n∵ aux: 5\nSome ✦ flourish ✦\nHe eats 1, so 2 are left.\n#### 2"
    assert strip_suspicious(text) == "Tom has 3 apples.\nHe eats 1, so 2 are left.\n#### 2"
    assert strip_suspicious("✦ ✦ ✦") == "✦ ✦ ✦"  # the last content line stays


def test_normalise_removes_numbering_symbols_and_odd_spacing():
    text = "(1) 36 ⟸ 3 × 12 ▹ total\n  2.  ｆｕｌｌ width   40 ÷ 2 = 20\n• 7 := 6 − (−1)\n∴ 31"
    assert normalise(text).splitlines() == ["36 = 3 * 12 total", "full width 40 / 2 = 20", "7 = 6 - (-1)", "31"]


def test_countermeasures_registry_and_errors():
    assert set(COUNTERMEASURES) == {"none", "invert", "flip", "strip", "normalise", "all"}
    protected = restructure(TRACE)
    assert apply_countermeasure("none", protected) == protected
    everything = apply_countermeasure("all", protected)
    assert plain_form(everything) and not MARKS.search(everything) and "3 * 12 = 36" in everything
    with pytest.raises(UnknownCountermeasure, match="unknown countermeasure 'regex'"):
        apply_countermeasure("regex", protected)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Wendy plants sunflowers: 36 = 4*9.", "Wendy plants sunflowers: 4*9 = 36."),
        ("so 70 = 10 x 7, and 294 = 228+22 × 3", "so 10 x 7 = 70, and 228+22 × 3 = 294"),
        ("It costs 2.5 = 5/2 dollars", "It costs 5/2 = 2.5 dollars"),
        ("He has 5 = 2+2 apples", "He has 5 = 2+2 apples"),  # false: left alone
        ("Liam is 20+7 = 27 years old.", "Liam is 20+7 = 27 years old."),  # already result-last
        ("3 + 5 = 8 = 4*2", "3 + 5 = 8 = 4*2"),  # part of a chain
        ("x = 3*4 and 12 = 3*4 = 12", "x = 3*4 and 12 = 3*4 = 12"),
    ],
)
def test_flip_result_first(text, want):
    assert flip_result_first(text) == want


def test_all_returns_stealth_traces_to_result_last_form():
    for seed in range(20):
        stealth = restructure_stealth(TRACE, random.Random(seed))
        cleaned = apply_countermeasure("all", stealth)
        assert plain_form(cleaned), (stealth, cleaned)
        assert extract_final_answer(cleaned) == "31"


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason="GSM8K data not present")
def test_inversion_on_gsm8k_returns_equations_to_plain_form():
    with GSM8K_TRAIN.open() as handle:
        rows = [json.loads(line) for _, line in zip(range(6200), handle)][6000:]
    plain = sum(plain_form(invert_restructure(restructure(r["answer"]))) for r in rows)
    source = sum(plain_form(r["answer"]) for r in rows)
    assert plain >= source - 2 and plain >= 0.97 * len(rows)  # what the GSM8K solutions themselves read
    stealthy = sum(plain_form(invert_restructure(restructure_stealth(r["answer"], random.Random(i))))
                   for i, r in enumerate(rows))
    assert stealthy < 0.2 * len(rows)  # the stealthy variant is not undone by the same inversion


# -- the audit CLI --------------------------------------------------------------------------------------
def test_audit_cli_rejects_bad_input(tmp_path, capsys):
    assert audit_main(["--data", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no such data file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": 1}\n')
    assert audit_main(["--data", str(bad), "--start", "0"]) == 2
    assert "not a GSM8K row" in capsys.readouterr().err
    assert audit_main(["--data", str(bad), "--start", "0", "--limit", "0"]) == 2
    assert audit_main(["--data", str(bad), "--start", "5"]) == 2
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "q", "answer": "2 * 3 = <<2*3=6>>6 apples.\n#### 6"}) + "\n")
    assert audit_main(["--data", str(good), "--start", "0", "--rewriter", "paraphrase"]) == 2
    out = tmp_path / "a.json"
    assert audit_main(["--data", str(good), "--start", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["raw"]["all_results_kept"] == 1 and report["guarded"]["fell_back"] == 0


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason="GSM8K data not present")
@pytest.mark.parametrize("rewriter", ["restructure", "restructure-stealth"])
def test_audit_cli_on_fifty_gsm8k_solutions(tmp_path, rewriter):
    out = tmp_path / "audit.json"
    command = [sys.executable, "-m", "tracemark.experiments.restructure_audit", "--data", str(GSM8K_TRAIN),
               "--start", "6000", "--limit", "50", "--rewriter", rewriter, "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    for part in ("raw", "guarded"):
        assert report[part]["traces"] == 50 and report[part]["answers_preserved"] == 50
    guarded = report["guarded"]
    assert guarded["all_results_kept"] == 50 and guarded["false_equations"] == 0
    assert "rewriter alone" in done.stdout
