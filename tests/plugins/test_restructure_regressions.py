"""``restructure`` regressions from the GSM8K audit (issue 14), and ``restructure-stealth``."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.builtin.restructure import restructure
from tracemark.plugins.builtin.restructure_stealth import StealthRestructureRewriter, restructure_stealth
from tracemark.plugins.equations import check_rewrite, extract_equations

GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"
SYMBOLS = ("⟸", "▹", "∵", "∴", ":=")


def _ok(source: str, output: str) -> str:
    report = check_rewrite(source, output)
    assert report.ok, (report.detail(), output)
    return output


def test_an_unannotated_fraction_is_a_derivation_not_a_result():
    out = _ok(t := "Natalia sold 48/2 = 24 clips in May.\n#### 24", restructure(t))
    assert out.splitlines()[0] == "(1) 24 ⟸ 48/2 ▹ Natalia sold clips in May"
    jenny = "Since 4/7 is $24, then 1/7 is $24/4 = $6.\n#### 6"
    assert "$6 ⟸ $24/4" in _ok(jenny, restructure(jenny))


@pytest.mark.parametrize(
    ("trace", "step"),
    [
        ("In 3 hours, there are 3 x 4 = <<3*4=12>>12 (15 minutes) slots.\nSo 12 x 5 = <<12*5=60>>60.\n#### 60",
         "(1) 12 ⟸ 3 × 4 ▹ In 3 hours, there are (15 minutes) slots"),
        ("There are 60/5=<<60/5=12>>12 5-minute intervals in 1 hour.\n#### 12",
         "(1) 12 ⟸ 60/5 ▹ There are 5-minute intervals in 1 hour"),
        ("Luke's parents gave him 1 + 4 = <<1+4=5>>5 $50 bills.\n#### 5", "(1) 5 ⟸ 1+4 ▹ Luke's parents gave him $50 bills"),
    ],
)
def test_an_annotation_followed_by_a_number_or_bracket_keeps_its_result(trace, step):
    assert _ok(trace, restructure(trace)).splitlines()[0] == step


@pytest.mark.parametrize(
    "trace",
    [
        "Let x be the number. x + 4 = 28.\nSo x = 28 - 4 = <<28-4=24>>24.\n#### 24",
        "3x = 24, so x = 24/3 = <<24/3=8>>8.\n#### 8",
        "Combining like terms, we get X*2 - $40 = $250\nX = 290/2 = <<290/2=145>>145\n#### 145",
        "She spent S + 30 + 46 = S + <<+30+46=76>>76.\n#### 76",
        "We know that 60/100 * x = 54 pounds\nx= 54*100/60 = <<54*100/60=90>>90 pounds\n#### 90",
        "For Yuko, 1 + 5 + X = 11 squares.\nX = 11 - 6 = <<11-6=5>>5\n#### 5",
        "The cross product gives: 275 x = 33 * 100\nx = 3300/275 = <<3300/275=12>>12\n#### 12",
        "we get -6=-1L or L=6\nT = 10 - 6 = <<10-6=4>>4\n#### 4",
        "then 4000=(1/2)X.\nX=<<8000=8000>>8000 pounds.\n#### 8000",
        "He reads 21 x (1 and 1/3) = 28 pages.\n#### 28",
        "In ten years, (X+10)*1/2 = 45 years.\n#### 45",
    ],
)
def test_algebra_gives_no_false_steps(trace):
    out = _ok(trace, restructure(trace))
    for bad in ("28 ⟸ 4", "24 ⟸ 3", "$250 ⟸", "76 ⟸ 30", "54 ⟸", "11 ⟸", "275 ⟸", "4000 ⟸", "28 ⟸ 1/3", "45 ⟸ 10"):
        assert bad not in out


def test_no_doubled_words_dangling_operators_or_glued_decimals():
    gnomes = "In the first four houses, there are a total of 4 houses * 3 gnomes = <<4*3=12>>12 gnomes.\n#### 12"
    assert "gnomes gnomes" not in _ok(gnomes, restructure(gnomes))
    erasers = "The council will make 1,152 erasers x $0.75 = $<<1152*0.75=864>>864.\nSo 2 + 2 = 4 x\n#### 864"
    for line in _ok(erasers, restructure(erasers)).splitlines():
        assert not re.search(r"(?:[+\-*/×÷=⟸]|\d\s+[xX])\s*$", line), line
    cents = "Each costs 5 x .01 = $<<5*.01=.05>>.05 and 2 liters * 20% = <<2*20*.01=.4>>.4 liters.\n#### .05"
    out = _ok(cents, restructure(cents))
    assert not re.search(r"(?:\s[xX×*]|=|⟸)\.\d", out) and ".4" in out and ".05" in out


def test_is_equal_to_is_not_turned_into_a_false_equation():
    trace = "Since 3/4 is equal to $15, then 1/4 is equal to $15/3 = $5.\n#### 5"
    out = _ok(trace, restructure(trace))
    assert "3/4 is $15" in out


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason="GSM8K data not present")
def test_gsm8k_slice_keeps_every_result_and_states_no_false_equation():
    with GSM8K_TRAIN.open() as handle:
        rows = [json.loads(line) for _, line in zip(range(6400), handle)][6000:]
    for row in rows:
        for out in (restructure(row["answer"]), restructure_stealth(row["answer"], random.Random(row["question"]))):
            _ok(row["answer"], out)
            assert answers_match(extract_final_answer(row["answer"]), extract_final_answer(out))


# -- restructure-stealth ------------------------------------------------------------------------------
GSM = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
NARRATIVE = (
    "Okay, let's think about this step by step.\n"
    "First, we know that Tom has 3 boxes with 12 apples each. So the total number of apples is 3 * 12 = 36.\n"
    "Wait, he also gives away 5 apples. Let me double-check: 36 - 5 = 31.\n"
    "Hmm, that seems right. So the answer is \\boxed{31}."
)


def test_stealth_puts_results_first_without_fixed_symbols():
    out = restructure_stealth(NARRATIVE, random.Random(1))
    _ok(NARRATIVE, out)
    assert not any(s in out for s in SYMBOLS) and not re.search(r"^\(\d+\)", out, re.MULTILINE)
    assert "36 = 3" in out and "31 = 36 - 5" in out and extract_final_answer(out) == "31"
    for filler in ("Okay", "let's", "Wait", "Hmm", "double-check"):
        assert filler not in out


def test_stealth_phrasing_varies_with_the_seed_and_is_reproducible():
    outs = {restructure_stealth(GSM, random.Random(seed)) for seed in range(40)}
    assert len(outs) >= 10
    assert restructure_stealth(GSM, random.Random(7)) == restructure_stealth(GSM, random.Random(7))
    for out in outs:
        _ok(GSM, out)
        assert out.endswith("#### 72") and "24 = 48/2" in out.replace(" ", "").replace("=", " = ")


def test_stealth_rewriter_uses_the_context_rng_or_its_seed():
    rewriter = StealthRestructureRewriter(StealthRestructureRewriter.parse_options({"seed": 3}))
    assert rewriter.rewrite(GSM, RewriteContext()) == rewriter.rewrite(GSM, RewriteContext())
    free = StealthRestructureRewriter()
    ctx = [RewriteContext(rng=random.Random(s)) for s in (5, 5)]
    assert free.rewrite(GSM, ctx[0]) == free.rewrite(GSM, ctx[1])
    assert StealthRestructureRewriter.name == "restructure-stealth"
    assert all(e.true for e in extract_equations(free.rewrite(GSM, RewriteContext(rng=random.Random(9)))))
