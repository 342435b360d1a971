"""The intermediate-result guard (``tracemark.plugins.equations``) and its use in the rewrite pipeline."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from tracemark.plugins.api import RewriteContext, Rewriter
from tracemark.plugins.builtin.restructure import RestructureRewriter
from tracemark.plugins.equations import (
    EQUATION_GUARDED,
    check_rewrite,
    extract_equations,
    false_equations,
    guard_applies,
    intermediate_results,
    missing_results,
    stated_numbers,
)
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17"


def _truth(text: str) -> list[tuple[tuple[str, ...], bool]]:
    return [(e.sides, e.true) for e in extract_equations(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips", [(("48/2", "24"), True)]),
        ("(1) 24 ⟸ 48/2 ▹ Natalia sold clips", [(("24", "48/2"), True)]),
        ("(2) 28 ⟸ 4 - 4", [(("28", "4-4"), False)]),  # the false step
        ("(1) 3 ⟸ 24/3", [(("3", "24/3"), False)]),
        ("72 := 48+24", [(("72", "48+24"), True)]),
        ("10 ⟸ 6 + 4 ⟸ 2 × 3 + 4", [(("10", "6+4", "2*3+4"), True)]),
        ("0.2 x 50 = $10 and 5 x.01 =.05", [(("0.2*50", "10"), True), (("5*.01", ".05"), True)]),
        ("12 ÷ 4 = 3", [(("12/4", "3"), True)]),
        ("2^3 = 8", [(("2^3", "8"), True)]),
        ("(3+4)*2 = 14", [(("(3+4)*2", "14"), True)]),
        ("$1,200 - $200 = $1,000", [(("1200-200", "1000"), True)]),
        ("20% * 50 = 10", [(("20%*50", "10"), True)]),
        ("8/32*100 = 25%", [(("8/32*100", "25%"), True)]),  # GSM8K's percentage
        ("100% - 20% = 80%", [(("100%-20%", "80%"), True)]),
        ("45 * 0,2 = 9", [(("45*0.2", "9"), True)]),  # decimal comma
        ("10/3 = 3.33", [(("10/3", "3.33"), True)]),  # rounding to the displayed precision
        ("10/3 = 3.4", [(("10/3", "3.4"), False)]),
        ("3 x 4 = 12 (15 minutes)", [(("3*4", "12"), True)]),
    ],
)
def test_equations_are_found_and_checked(text, expected):
    assert _truth(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "x + 4 = 28",  # the left side is cut off at a variable: not "4 = 28"
        "20% of 30 = 6",
        "3x = 24",
        "Combining like terms, we get X*2 - $40 = $250",
        "then 4000=(1/2)X",
        "Rebecca: (2x-10)-8=2x-18",
        "Step 1 = 5",
        "2 = 2",
        "He has 1 + = 3",
    ],
)
def test_no_equation_is_read_into_algebra_or_prose(text):
    assert extract_equations(text) == []


def test_annotations_are_equations_and_results():
    text = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute. Remaining 10 = 62,300/10 = $6230"
    assert (("12/60", "0.2"), True) in _truth(text)
    assert intermediate_results(text) == [Decimal("0.2"), Decimal("6230")]  # not the label 10


def test_false_equations_of_the_input_are_not_the_rewriters():
    source = "He pays 3 * 4 = <<3*4=13>>13 dollars.\n#### 13"
    output = "(1) 13 ⟸ 3 × 4 ▹ He pays dollars\n#### 13"
    assert false_equations(output)  # false ...
    assert false_equations(output, reference=source) == []  # ... but stated so in the input
    assert check_rewrite(source, output).ok
    assert not check_rewrite(source, "(1) 13 ⟸ 3 × 5\n#### 13").ok


def test_a_result_must_be_stated_not_only_used():
    source = "In 3 hours, there are 3 x 4 = <<3*4=12>>12 (15 minutes).\nSo 12 x 5 = <<12*5=60>>60.\n#### 60"
    lost = "In 3 hours, there are 3 x 4 = (15 minutes)\n(1) 60 ⟸ 12 × 5\n#### 60"  # the case
    assert missing_results(source, lost) == [Decimal("12")]
    report = check_rewrite(source, lost)
    assert not report.ok and "1 intermediate result(s) lost (12)" in report.detail()
    assert Decimal("12") in stated_numbers("(1) 12 ⟸ 3 × 4")
    assert stated_numbers("12 + 5 = 17 and $18/week, -5 left") == {Decimal(17), Decimal(18), Decimal(5)}


def test_a_result_the_input_only_uses_as_an_operand_may_stay_one():
    source = "Let X be my age. In ten years, I'll be X+<<+10=10>>10 years old.\n#### 20"
    assert missing_results(source, "∵ In ten years, I'll be X+10 years old\n#### 20") == []
    assert missing_results(source, "∵ In ten years, I'll be old\n#### 20") == [Decimal("10")]


def test_report_detail_is_one_line():
    report = check_rewrite(TRACE, "(1) 13 ⟸ 3 × 4\n#### 17")
    detail = report.detail()
    assert "\n" not in detail and "false equation" in detail and "lost (12" in detail


@pytest.mark.parametrize(
    "adversarial",
    ["1 + " * 5000 + "= 5", "(" * 3000 + "1" + ")" * 3000 + " = 1", "2^" * 2000 + "2 = 4", "9^99^99 = 1",
     "1 = " * 5000 + "1", "<<" * 3000 + "1=2" + ">>" * 3000, "1/0 = 5"],
)
def test_pathological_input_is_fast_and_does_not_raise(adversarial):
    start = time.perf_counter()
    check_rewrite(adversarial, adversarial)
    assert time.perf_counter() - start < 2.0


def test_which_steps_the_guard_checks():
    assert "restructure" in EQUATION_GUARDED and "restructure-stealth" in EQUATION_GUARDED
    assert guard_applies(None, "restructure") and not guard_applies(None, "semantic")
    assert guard_applies(True, "semantic") and not guard_applies(False, "restructure")
    assert guard_applies({"semantic"}, "semantic") and not guard_applies({"semantic"}, "restructure")


# -- in the pipeline ----------------------------------------------------------------------------------
class WrongStep(Rewriter):
    """Keeps the answer but states a false equation (and drops the 12) on its first attempt."""

    name = "wrong-step"

    def rewrite(self, trace, context):
        if context.attempt == 0 or context.problem == "always":
            return "Tom has 3 * 4 = 13 apples.\nHe gets 4 more: 13 + 4 = 17.\n#### 17"
        return "Tom has 12 = 3 * 4 apples. 17 = 12 + 5.\n#### 17"


class Dropper(Rewriter):
    name = "restructure"  # a stand-in under the guarded name: loses an intermediate result

    def rewrite(self, trace, context):
        return "He gets 5 more.\n#### 17"


def _pipeline(cls, **kwargs):
    return RewritePipeline(RewriterRegistry.from_classes(cls), timeout_s=5, **kwargs)


def test_a_false_equation_is_retried_then_falls_back():
    pipeline = _pipeline(WrongStep, equation_guard=True)
    retried = pipeline.run(TRACE, names=["wrong-step"])
    assert retried.steps[0].guard == "preserved_after_retry" and retried.trace.startswith("Tom has 12 = 3 * 4")
    failed = pipeline.run(TRACE, names=["wrong-step"], context=RewriteContext(problem="always"))
    step = failed.steps[0]
    assert step.guard == "fell_back" and step.attempts == 2 and failed.trace == TRACE
    assert "intermediate-result guard: 1 false equation(s), e.g. '3*4 = 13'; 1 intermediate result(s) lost (12)" in step.detail and "on every attempt" in step.detail


def test_the_default_guards_restructure_rewriters_only():
    unguarded = _pipeline(WrongStep).run(TRACE, names=["wrong-step"], context=RewriteContext(problem="always"))
    assert unguarded.steps[0].guard == "preserved" and unguarded.trace != TRACE
    dropped = _pipeline(Dropper).run(TRACE, names=["restructure"])
    assert dropped.steps[0].guard == "fell_back" and "intermediate result(s) lost" in dropped.steps[0].detail
    off = _pipeline(Dropper, equation_guard=False).run(TRACE, names=["restructure"])
    assert off.steps[0].guard == "preserved" and off.trace == "He gets 5 more.\n#### 17"
    named = _pipeline(WrongStep, equation_guard=["wrong-step"])
    assert named.run(TRACE, names=["wrong-step"]).steps[0].guard == "preserved_after_retry"


def test_the_real_restructure_passes_the_guard_in_the_pipeline():
    result = _pipeline(RestructureRewriter).run(TRACE, names=["restructure"])
    assert result.steps[0].guard == "preserved" and "12 ⟸ 3 × 4" in result.trace
