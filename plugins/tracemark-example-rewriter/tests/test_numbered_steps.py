"""Tests of the example plugin: its behaviour, its options, and that tracemark loads it as a plugin."""

from __future__ import annotations

from importlib import metadata

import pytest
from pydantic import ValidationError
from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline
from tracemark_example_rewriter import NumberedStepsOptions, NumberedStepsRewriter, number_steps

GSM = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def test_numbers_steps_and_keeps_final_line():
    out = number_steps(GSM)
    assert out.splitlines() == [
        "Step 1: Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
        "Step 2: Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
        "#### 72",
    ]


def test_last_number_traces_keep_their_answer():
    trace = "He has 3 apples.\nHe buys 4 more, so 3 + 4 = 7.\nThat is all."
    out = number_steps(trace)
    assert extract_final_answer(out) == "7"
    assert out.splitlines()[-1] == "That is all."


def test_options_label_start_and_sentences():
    opts = NumberedStepsOptions(label="Schritt", start=0, split_sentences=True)
    out = number_steps("First 2 + 2 = 4. Then 4 * 3 = 12. The answer is \\boxed{12}.", opts)
    assert out.splitlines() == [
        "Schritt 0: First 2 + 2 = 4.",
        "Schritt 1: Then 4 * 3 = 12.",
        "The answer is \\boxed{12}.",
    ]


def test_already_numbered_lines_are_left_alone():
    assert number_steps("Step 1: 2 + 2 = 4\n#### 4") == "Step 1: 2 + 2 = 4\n#### 4"


@pytest.mark.parametrize("bad", [{"label": "S1"}, {"start": -1}, {"colour": "red"}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValidationError):
        NumberedStepsRewriter.parse_options(bad)


def test_loads_through_the_entry_point_group_and_runs_in_a_pipeline():
    ep = metadata.EntryPoint(
        name="numbered-steps",
        value="tracemark_example_rewriter.rewriter:NumberedStepsRewriter",
        group="tracemark.rewriters",
    )
    registry = RewriterRegistry.discover(strict=True, allowlist=[], entry_points=[ep])
    assert registry.get("numbered-steps") is NumberedStepsRewriter
    record = registry.record("numbered-steps")
    assert record.status == "loaded" and "label" in record.options_schema["properties"]
    result = RewritePipeline(registry).run(
        GSM, names=["numbered-steps"], options={"numbered-steps": {"label": "S"}}, context=RewriteContext()
    )
    assert result.answer_preserved and result.steps[0].guard == "preserved"
    assert result.trace.startswith("S 1: ")


def test_installed_distribution_is_discovered():
    try:
        dist = metadata.distribution("tracemark-example-rewriter")
    except metadata.PackageNotFoundError:
        pytest.skip(
            "tracemark-example-rewriter is not installed (pip install -e plugins/tracemark-example-rewriter)"
        )
    registry = RewriterRegistry.discover(strict=False, allowlist=[])
    record = registry.record("numbered-steps")
    assert record.status == "loaded"
    assert record.distribution == "tracemark-example-rewriter" and record.version == dist.version
