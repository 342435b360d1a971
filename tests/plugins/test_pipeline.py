"""The rewrite pipeline: answer guard, retries, fallbacks, time limits, options validation, composition."""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError
from tracemark.plugins.builtin.identity import IdentityRewriter
from tracemark.plugins.builtin.restructure import RestructureRewriter
from tracemark.plugins.builtin.watermark import WatermarkRewriter
from tracemark.plugins.errors import (
    InvalidRewriterOptions,
    RewriterFailed,
    RewriterTimeout,
    UnknownRewriterError,
)
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17"


class Boom(Rewriter):
    name = "boom"

    def rewrite(self, trace, context):
        raise ValueError("boom at line 1\nsecond line with detail")


class GiveUp(Rewriter):
    name = "give-up"

    def rewrite(self, trace, context):
        raise RewriterError("cannot rewrite this one")


RELEASE = threading.Event()


class Sleepy(Rewriter):
    name = "sleepy"

    def rewrite(self, trace, context):
        RELEASE.wait(20)
        return trace + "\nslept"


class FixOnRetry(Rewriter):
    """Changes the answer on the first attempt, keeps it on the second."""

    name = "fix-on-retry"

    def rewrite(self, trace, context):
        if context.attempt == 0:
            return trace.replace("#### 17", "#### 18")
        return f"Rewritten on attempt {context.attempt}.\n{trace}"


class AlwaysWrong(Rewriter):
    name = "always-wrong"

    def rewrite(self, trace, context):
        return "The answer is #### 99"


class NotAString(Rewriter):
    name = "not-a-string"

    def rewrite(self, trace, context):
        return 42


class Dice(Rewriter):
    """Uses the context RNG: output must be reproducible from the request seed."""

    name = "dice"

    def rewrite(self, trace, context):
        return f"roll {context.rng.randrange(10**9)}\n{trace}"


class TagOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field("T", min_length=1, max_length=5)
    times: int = Field(1, ge=1, le=3)


class Tag(Rewriter):
    name = "tag"
    Options = TagOptions
    calls = 0

    def rewrite(self, trace, context):
        Tag.calls += 1
        context.note(f"tagged {self.options.times}x")
        return f"[{self.options.tag * self.options.times}]\n{trace}"


class BadAccept(Rewriter):
    name = "bad-accept"

    def rewrite(self, trace, context):
        return "accepted?\n" + trace

    def accepted(self, trace, context):
        raise ConnectionError("ledger down")


@pytest.fixture(autouse=True)
def _release_sleepers():
    RELEASE.clear()
    yield
    RELEASE.set()  # let abandoned worker threads finish


@pytest.fixture
def registry():
    return RewriterRegistry.from_classes(
        Boom, GiveUp, Sleepy, FixOnRetry, AlwaysWrong, NotAString, Dice, Tag, BadAccept,
        IdentityRewriter, RestructureRewriter, WatermarkRewriter,
    )  # fmt: skip


def test_happy_path_records_each_step(registry):
    result = RewritePipeline(registry).run(TRACE, names=["tag", "identity"], options={"tag": {"times": 2}})
    assert result.trace.startswith("[TT]\n") and result.answer_preserved
    assert (result.original_answer, result.final_answer) == ("17", "17")
    assert [(s.name, s.guard, s.attempts) for s in result.steps] == [
        ("tag", "preserved", 1),
        ("identity", "preserved", 1),
    ]
    assert result.steps[0].detail == "tagged 2x" and result.trace_id


def test_raising_plugin_falls_back_with_an_error_id_only(registry, caplog):
    """The caller sees a generic detail and an error id; the message goes to the log under that id."""
    result = RewritePipeline(registry).run(TRACE, names=["boom"])
    step = result.steps[0]
    assert result.trace == TRACE and result.answer_preserved
    assert (step.guard, step.attempts, step.fell_back) == ("error", 1, True)
    match = re.fullmatch(r"error id ([0-9a-f]{12}): the rewriter raised an error \(details in the server log only\)", step.detail)
    assert match and "boom" not in step.detail and "ValueError" not in step.detail
    logged = [r.getMessage() for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and "ValueError: boom at line 1" in logged[0]


def test_rewriter_error_falls_back(registry):
    step = RewritePipeline(registry).run(TRACE, names=["give-up"]).steps[0]
    assert step.guard == "error" and step.detail == "RewriterError: cannot rewrite this one"


def test_raising_plugin_with_raise_policy(registry):
    pipeline = RewritePipeline(registry, on_error="raise")
    with pytest.raises(RewriterFailed, match=r"rewriter 'boom' failed \(error id [0-9a-f]{12}: the rewriter raised an error") as info:
        pipeline.run(TRACE, names=["boom"])
    assert info.value.name == "boom"
    assert pipeline.run(TRACE, names=["boom"], on_error="fallback").steps[0].guard == "error"


def test_sleeping_plugin_times_out_and_the_pipeline_goes_on(registry):
    pipeline = RewritePipeline(registry, timeout_s=0.5)
    start = time.perf_counter()
    result = pipeline.run(TRACE, names=["sleepy", "tag"])
    elapsed = time.perf_counter() - start
    assert 0.45 <= elapsed < 3.0
    sleepy, tag = result.steps
    assert (sleepy.guard, sleepy.detail) == ("timeout", "timed out after 0.5 s")
    assert tag.guard == "preserved" and result.trace == "[T]\n" + TRACE  # continued from the input
    assert pipeline.abandoned("sleepy") == 1 and pipeline.abandoned_total == 1
    # Other requests are served while the hung thread is still alive.
    assert pipeline.run(TRACE, names=["restructure"]).steps[0].guard == "preserved"
    RELEASE.set()
    deadline = time.time() + 5
    while pipeline.abandoned("sleepy") and time.time() < deadline:
        time.sleep(0.02)
    assert pipeline.abandoned("sleepy") == 0 and pipeline.abandoned_total == 1


def test_sleeping_plugin_with_raise_policy(registry):
    pipeline = RewritePipeline(registry, timeout_s=0.3, on_error="raise")
    with pytest.raises(RewriterTimeout, match="rewriter 'sleepy' timed out after 0.3 s"):
        pipeline.run(TRACE, names=["sleepy"])


def test_a_plugin_that_always_hangs_is_taken_out_of_service(registry):
    pipeline = RewritePipeline(registry, timeout_s=0.2, max_abandoned=2)
    first = pipeline.run(TRACE, names=["sleepy"]).steps[0]
    assert first.guard == "timeout" and registry.record("sleepy").status == "loaded"
    second = pipeline.run(TRACE, names=["sleepy"]).steps[0]
    assert second.guard == "timeout" and "disabled after 2 hung attempts" in second.detail
    assert registry.record("sleepy").status == "failed"
    with pytest.raises(UnknownRewriterError, match="'sleepy' is failed: disabled after 2 time-outs") as info:
        pipeline.run(TRACE, names=["sleepy"])
    assert info.value.status == "failed"
    assert pipeline.abandoned("sleepy") == 2  # bounded: no third thread was started


def test_guard_retry_then_preserved(registry):
    result = RewritePipeline(registry, retries=1).run(TRACE, names=["fix-on-retry"])
    step = result.steps[0]
    assert (step.guard, step.attempts) == ("preserved_after_retry", 2)
    assert result.trace.startswith("Rewritten on attempt 1.")


def test_guard_falls_back_when_every_attempt_changes_the_answer(registry):
    result = RewritePipeline(registry, retries=2).run(TRACE, names=["always-wrong"])
    step = result.steps[0]
    assert (step.guard, step.attempts) == ("fell_back", 3)
    assert "answer changed ('99' instead of '17')" in step.detail
    assert result.trace == TRACE and result.answer_preserved
    no_retry = RewritePipeline(registry, retries=0).run(TRACE, names=["fix-on-retry"]).steps[0]
    assert (no_retry.guard, no_retry.attempts) == ("fell_back", 1)


def test_trace_without_answer_is_accepted_as_no_answer(registry):
    result = RewritePipeline(registry).run("no numbers here at all", names=["tag"])
    assert result.steps[0].guard == "no_answer" and result.original_answer is None
    assert result.answer_preserved  # nothing to lose


def test_non_string_output_is_an_error(registry):
    step = RewritePipeline(registry).run(TRACE, names=["not-a-string"]).steps[0]
    assert step.guard == "error" and "returned int, not str" in step.detail


def test_failing_accept_hook_falls_back(registry):
    result = RewritePipeline(registry).run(TRACE, names=["bad-accept"])
    assert result.trace == TRACE and result.steps[0].guard == "error"
    assert "error id" in result.steps[0].detail and "ledger down" not in result.steps[0].detail


def test_options_are_validated_before_any_work(registry):
    pipeline = RewritePipeline(registry)
    Tag.calls = 0
    with pytest.raises(UnknownRewriterError, match="unknown rewriter 'nope'"):
        pipeline.run(TRACE, names=["tag", "nope"])
    with pytest.raises(
        InvalidRewriterOptions, match=r"^invalid options for rewriter 'tag': times: .*less than or equal to 3"
    ):
        pipeline.run(TRACE, names=["tag"], options={"tag": {"times": 9}})
    with pytest.raises(InvalidRewriterOptions, match="tag.*colour: Extra inputs are not permitted"):
        pipeline.run(TRACE, names=["identity", "tag"], options={"tag": {"colour": "red"}})
    with pytest.raises(
        InvalidRewriterOptions, match="options given for rewriters not in the pipeline: restructure"
    ):
        pipeline.run(TRACE, names=["tag"], options={"restructure": {}})
    with pytest.raises(InvalidRewriterOptions, match="must be a JSON object"):
        pipeline.run(TRACE, names=["tag"], options={"tag": ["x"]})
    with pytest.raises(InvalidRewriterOptions, match="pipeline is empty"):
        pipeline.run(TRACE, names=[" ", ""])
    with pytest.raises(InvalidRewriterOptions, match="'watermark' must be the last step"):
        pipeline.run(TRACE, names=["watermark", "restructure"])
    with pytest.raises(InvalidRewriterOptions) as info:
        pipeline.run(TRACE, names=["tag"], options={"tag": {"tag": "", "times": 0, "x": 1, "y": 2}})
    assert "\n" not in str(info.value) and "(+1 more)" in str(info.value)
    assert Tag.calls == 0


def test_context_rng_makes_runs_reproducible(registry):
    pipeline = RewritePipeline(registry)

    def run(seed):
        return pipeline.run(TRACE, names=["dice"], context=RewriteContext(rng=random.Random(seed))).trace

    assert run(7) == run(7) and run(7) != run(8)


def _signed(registry, issuer, first, account, trace_id):
    """Run ``first,watermark`` (fraction 1) for ``account`` with ``issuer`` as the signature service."""
    context = RewriteContext(account=account, trace_id=trace_id, signatures=issuer)
    return RewritePipeline(registry).run(
        TRACE, names=[first, "watermark"], options={"watermark": {"fraction": 1.0}}, context=context
    )


def test_composition_restructure_then_watermark(registry, h):
    issuer = h.FakeIssuer()
    result = _signed(registry, issuer, "restructure", "alice", "t-1")
    assert [s.guard for s in result.steps] == ["preserved", "preserved"]
    assert result.answer_preserved and result.final_answer == "17"
    assert "⟸" in result.trace and result.trace.splitlines()[-1] == "#### 17"
    assert any(p.text in result.trace for p in issuer.pairs_for("alice"))
    assert [(i["account"], i["trace_id"], i["rewriter"]) for i in issuer.issued] == [
        ("alice", "t-1", "watermark/template")
    ]
    assert result.steps[1].detail == ""  # whether a trace is signed is never disclosed


def test_fallen_back_trace_is_still_watermarked(registry, h):
    issuer = h.FakeIssuer()
    result = _signed(registry, issuer, "boom", "bob", "t-2")
    assert [s.guard for s in result.steps] == ["error", "preserved"]
    assert result.trace != TRACE and any(p.text in result.trace for p in issuer.pairs_for("bob"))
    assert len(issuer.issued) == 1


def test_pipeline_is_safe_under_concurrent_requests(registry, h):
    issuer = h.FakeIssuer()
    pipeline = RewritePipeline(registry, timeout_s=10)

    def one(i):
        context = RewriteContext(
            account=f"acct-{i % 3}",
            trace_id=f"trace-{i}",
            rng=random.Random(i),
            signatures=issuer,
        )
        trace = (
            TRACE.replace("17", str(17 + i)).replace("12+5", f"12+{5 + i}").replace("5 more", f"{5 + i} more")
        )
        return i, pipeline.run(
            trace,
            names=["restructure", "watermark"],
            options={"watermark": {"fraction": 1.0}},
            context=context,
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(48)))
    for i, result in results:
        assert result.answer_preserved and result.final_answer == str(17 + i)
        assert result.trace_id == f"trace-{i}"
        assert any(p.text in result.trace for p in issuer.pairs_for(f"acct-{i % 3}"))
    assert sorted(item["trace_id"] for item in issuer.issued) == sorted(f"trace-{i}" for i in range(48))


def test_constructor_rejects_bad_policies(registry):
    with pytest.raises(ValueError):
        RewritePipeline(registry, timeout_s=0)
    with pytest.raises(ValueError):
        RewritePipeline(registry, retries=-1)
    with pytest.raises(ValueError):
        RewritePipeline(registry, on_error="ignore")  # type: ignore[arg-type]


def test_custom_executor_is_used(registry):
    with ThreadPoolExecutor(2, thread_name_prefix="custom-pool") as pool:
        seen = []

        class Where(Rewriter):
            name = "where"

            def rewrite(self, trace, context):
                seen.append(threading.current_thread().name)
                return trace

        reg = RewriterRegistry.from_classes(Where)
        RewritePipeline(reg, executor=pool).run(TRACE, names=["where"])
    assert seen and seen[0].startswith("custom-pool")
