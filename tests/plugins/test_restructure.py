"""The model-free ``restructure`` rewriter."""

from __future__ import annotations

import re
import time

import pytest
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext, RewriterError
from tracemark.plugins.builtin.restructure import RestructureOptions, RestructureRewriter, restructure

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


def test_results_come_before_derivations_and_the_final_line_is_kept():
    assert restructure(GSM).splitlines() == [
        "(1) 24 ⟸ 48/2 ▹ Natalia sold clips in May",
        "(2) 72 ⟸ 48+24 ▹ Natalia sold clips altogether in April and May",
        "#### 72",
    ]


def test_narrative_filler_is_dropped_and_boxed_answer_closes():
    out = restructure(NARRATIVE)
    assert out.splitlines() == [
        "∵ Tom has 3 boxes with 12 apples each",
        "(1) 36 ⟸ 3 × 12 ▹ total number of apples",
        "∵ he also gives away 5 apples",
        "(2) 31 ⟸ 36 - 5",
        "∴ \\boxed{31}",
    ]
    for filler in ("Okay", "let's", "Wait", "Hmm", "double-check", "answer is"):
        assert filler not in out


def test_last_number_traces_end_with_the_answer():
    out = restructure("She earns 12 * 5 = 60 dollars and spends 15, leaving 60 - 15 = 45 dollars")
    assert out.splitlines()[-1] == "∴ 45" and extract_final_answer(out) == "45"


def test_chains_are_reversed_and_labels_kept():
    out = restructure("Total: 2 * 3 + 4 = 6 + 4 = 10.\nRemaining 10 = 62,300/10 = $6230\n#### 6230")
    assert "10 ⟸ 6 + 4 ⟸ 2 × 3 + 4" in out
    assert "$6230 ⟸ 62,300/10 ▹ Remaining 10" in out


def test_every_equation_result_survives_on_gsm8k_style_text(h):
    for _, trace, answer in h.procedural_traces(30, seed=3):
        out = restructure(trace)
        assert answers_match(answer, extract_final_answer(out))
        results = re.findall(r"=\s*(?:<<[^>]*>>)?\s*\$?(\d[\d,]*(?:\.\d+)?)", trace)
        for value in results:
            assert value in out, (value, trace, out)


def test_options_change_the_rendering():
    assign = restructure(GSM, RestructureOptions(style="assign", numbered=False, gloss=False))
    assert assign.splitlines() == ["24 := 48/2", "72 := 48+24", "#### 72"]


def test_rewriter_is_deterministic_and_refuses_huge_traces():
    rewriter = RestructureRewriter()
    assert rewriter.rewrite(GSM, RewriteContext()) == rewriter.rewrite(GSM, RewriteContext())
    small = RestructureRewriter(RestructureRewriter.parse_options({"max_chars": 10}))
    with pytest.raises(RewriterError, match="more than max_chars=10"):
        small.rewrite(GSM, RewriteContext())


@pytest.mark.parametrize(
    "adversarial",
    [
        "1 + " * 3000 + "= 5",
        "1," * 10000 + "=3",
        "$" * 5000 + "1=2",
        "the answer is " * 5000 + "x",
        "(" * 3000 + "1" + " " * 3000 + "= 2",
        "<<" * 5000 + "1=2" + ">>" * 5000,
        "a , " * 5000 + "x",
    ],
)
def test_pathological_input_is_handled_in_linear_time(adversarial):
    start = time.perf_counter()
    restructure(adversarial)
    assert time.perf_counter() - start < 2.0  # a backtracking regex would take minutes here


def test_empty_and_answerless_traces():
    assert restructure("") == ""
    assert restructure("Let me think. Hmm.") == "Let me think. Hmm."  # nothing to keep: unchanged
