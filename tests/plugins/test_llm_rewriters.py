"""The LLM rewriters ``semantic`` and ``optimized`` with scripted LLMs and a real (tiny) local model."""

from __future__ import annotations

import random

import pytest
from tracemark.plugins.api import RewriteContext, RewriterError
from tracemark.plugins.builtin.llm_base import strip_preamble
from tracemark.plugins.builtin.optimized import OPTIMIZED_INSTRUCTION, OptimizedRewriter
from tracemark.plugins.builtin.semantic import SEMANTIC_INSTRUCTION, SemanticRewriter
from tracemark.plugins.builtin.watermark import WatermarkRewriter
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline
from tracemark.server.llm import DirectLLM

PROBLEM = "Tom has 3 boxes of 4 apples and gets 5 more. How many apples does he have?"
TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17"


@pytest.fixture
def registry():
    return RewriterRegistry.from_classes(SemanticRewriter, OptimizedRewriter, WatermarkRewriter)


def test_semantic_prompt_reply_cleanup(h):
    llm = h.ScriptedLLM(
        lambda m, i: "Sure! Here is the rewritten solution:\n```\nBoxes: 3*4 = 12.\n12+5 = 17.\n#### 17\n```"
    )
    ctx = RewriteContext(problem=PROBLEM, llm=llm, rng=random.Random(1))
    out = SemanticRewriter().rewrite(TRACE, ctx)
    assert out == "Boxes: 3*4 = 12.\n12+5 = 17.\n#### 17"
    system, user = llm.calls[0]["messages"]
    assert system == {"role": "system", "content": SEMANTIC_INSTRUCTION}
    assert PROBLEM in user["content"] and h.solution_of(llm.calls[0]["messages"]) == TRACE
    assert user["content"].endswith("Finish with this exact final line: #### 17")
    assert llm.calls[0]["temperature"] == 0.2 and isinstance(llm.calls[0]["seed"], int)


def test_optimized_asks_for_a_boxed_answer_and_accepts_overrides(h):
    llm = h.ScriptedLLM(lambda m, i: "n = 3·4 = 12 ⇒ n + 5 = 17\n\\boxed{17}")
    opts = OptimizedRewriter.parse_options(
        {"instruction": "Be terse.", "max_new_tokens": 64, "temperature": 0}
    )
    out = OptimizedRewriter(opts).rewrite(TRACE, RewriteContext(llm=llm))
    assert out.endswith("\\boxed{17}")
    call = llm.calls[0]
    assert call["messages"][0]["content"] == "Be terse." and call["max_new_tokens"] == 64
    assert call["messages"][1]["content"].endswith("Finish with this exact final line: \\boxed{17}")
    assert "conversational" in OPTIMIZED_INSTRUCTION and "\\boxed{ANSWER}" in OPTIMIZED_INSTRUCTION


def test_llm_failures_are_retried_then_reported(h):
    flaky = h.ScriptedLLM(
        lambda m, i: ConnectionError("reset") if i < 2 else "3*4 = 12; 12 + 5 = 17\n#### 17"
    )
    out = SemanticRewriter(SemanticRewriter.parse_options({"llm_retries": 2})).rewrite(
        TRACE, RewriteContext(llm=flaky)
    )
    assert out.endswith("#### 17") and len(flaky.calls) == 3
    empty = h.ScriptedLLM(lambda m, i: "  \n")
    with pytest.raises(
        RewriterError, match="no usable rewrite after 2 calls: the LLM returned an empty rewrite"
    ):
        SemanticRewriter(SemanticRewriter.parse_options({"llm_retries": 1})).rewrite(
            TRACE, RewriteContext(llm=empty)
        )


def test_rewrites_that_drop_numbers_or_parrot_the_prompt_are_unusable(h):
    def respond(messages, i):
        if i == 0:
            return "He has some apples.\n#### 17"  # dropped 3, 4, 12 and 5
        return (
            "Finish with this exact final line: #### 17\n"
            + SEMANTIC_INSTRUCTION.split(". ")[0]
            + ".\n3·4 = 12, 12+5 = 17\n#### 17"
        )

    llm = h.ScriptedLLM(respond)
    out = SemanticRewriter().rewrite(TRACE, RewriteContext(llm=llm))
    assert out == "3·4 = 12, 12+5 = 17\n#### 17" and len(llm.calls) == 2
    strict = SemanticRewriter(SemanticRewriter.parse_options({"llm_retries": 0, "min_number_recall": 1.0}))
    with pytest.raises(RewriterError, match="kept 1 of 5 numbers"):
        strict.rewrite(TRACE, RewriteContext(llm=h.ScriptedLLM(lambda m, i: "#### 17")))


def test_without_an_llm_the_step_falls_back_with_a_clear_detail(registry):
    result = RewritePipeline(registry).run(TRACE, names=["optimized"])
    step = result.steps[0]
    assert step.guard == "error" and result.trace == TRACE
    assert "needs an LLM backend and none is configured" in step.detail


def test_guard_retry_uses_a_higher_temperature(registry, h):
    llm = h.ScriptedLLM(
        lambda m, i: "3·4 = 12; 12 + 5 = 18 \\boxed{18}" if i == 0 else "3·4 = 12; 12 + 5 = 17 ∴ \\boxed{17}"
    )
    result = RewritePipeline(registry, retries=1).run(
        TRACE, names=["optimized"], context=RewriteContext(llm=llm)
    )
    assert result.steps[0].guard == "preserved_after_retry" and result.final_answer == "17"
    assert [c["temperature"] for c in llm.calls] == [0.2, 0.7]
    assert llm.calls[0]["seed"] != llm.calls[1]["seed"]


def test_optimized_then_watermark(registry, h):
    llm = h.ScriptedLLM(lambda m, i: "n = 3·4 = 12\nm = n + 5 = 17\n\\boxed{17}")
    issuer = h.FakeIssuer()
    ctx = RewriteContext(account="acme", trace_id="o-1", llm=llm, signatures=issuer)
    result = RewritePipeline(registry).run(
        TRACE,
        names=["optimized", "watermark"],
        options={"watermark": {"fraction": 1, "mode": "template"}},
        context=ctx,
    )
    assert [s.guard for s in result.steps] == ["preserved", "preserved"]
    assert "n = 3·4 = 12" in result.trace and result.trace.endswith("\nm = n + 5 = 17\n\\boxed{17}")
    assert len(issuer.issued) == 1


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "Certainly! Here's the derivation:\nx = 1 + 1 = 2\n#### 2\nI hope this helps!",
            "x = 1 + 1 = 2\n#### 2",
        ),
        ("**Rewritten solution:**\n2 + 2 = 4", "2 + 2 = 4"),
        ("Here is 5 apples: 2+3=5", "Here is 5 apples: 2+3=5"),  # content line with digits stays
        ("```\n1 + 1 = 2\n```", "1 + 1 = 2"),
    ],
)
def test_strip_preamble(raw, clean):
    assert strip_preamble(raw) == clean


def test_with_a_real_tiny_local_model(registry, tiny_model_dir):
    from tracemark.server.teacher.local import LocalTeacher  # deferred: imports torch/transformers

    llm = DirectLLM(LocalTeacher(tiny_model_dir, quantization="none", device="cpu", model_id="tiny"))
    ctx = RewriteContext(problem=PROBLEM, llm=llm, rng=random.Random(0))
    result = RewritePipeline(registry, timeout_s=60).run(
        TRACE, names=["semantic"], options={"semantic": {"max_new_tokens": 16}}, context=ctx
    )
    step = result.steps[0]
    # A random model cannot keep the answer: the guard must catch it and return the original trace.
    assert step.guard in {"fell_back", "error"} and result.trace == TRACE and result.answer_preserved
    assert step.attempts >= 1
