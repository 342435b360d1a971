"""Protection is never silently off (issue 13, item 3): a failing ``watermark`` step still delivers a
signed trace (its protected fallback, the template weave of the same pair), recorded only when delivered;
a protected fallback that cannot be produced fails the run instead of delivering the unsigned input; the
watermark does the same work for signed and unsigned traces."""

from __future__ import annotations

import threading

import pytest
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError, WatermarkPolicy
from tracemark.plugins.builtin.identity import IdentityRewriter
from tracemark.plugins.builtin.watermark import WatermarkRewriter
from tracemark.plugins.errors import RewriterFailed
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17"
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def _release_hung_llms():
    RELEASE.clear()
    yield
    RELEASE.set()


def _llm(h, behaviour):
    def respond(messages, i):
        if behaviour == "hang":
            RELEASE.wait(30)
            return "too late"
        if behaviour == "raise":
            return RuntimeError("backend down")
        return "I will not do that."  # a refusal: the pair text is missing

    return h.ScriptedLLM(respond)


def _context(issuer, llm, trace_id, fraction=1.0):
    return RewriteContext(
        account="acme",
        trace_id=trace_id,
        llm=llm,
        signatures=issuer,
        watermark_policy=WatermarkPolicy(fraction=fraction, mode="llm"),
    )


def _signed_by(issuer, trace):
    return [p for p in issuer.pairs_for("acme") if p.text in trace]


@pytest.mark.parametrize("behaviour", ["raise", "refuse", "hang"])
def test_a_failing_weave_llm_still_delivers_a_signed_recorded_trace(h, behaviour):
    issuer = h.FakeIssuer()
    pipeline = RewritePipeline(
        RewriterRegistry.from_classes(WatermarkRewriter), timeout_s=0.3, max_abandoned=2
    )
    for i in range(4):  # "hang": after 2 hung threads the step goes straight to its fallback ("skipped")
        result = pipeline.run(
            TRACE, names=["watermark"], context=_context(issuer, _llm(h, behaviour), f"f-{i}")
        )
        step = result.steps[0]
        assert result.answer_preserved and result.trace.splitlines()[-1] == "#### 17"
        assert len(_signed_by(issuer, result.trace)) == 1, result.trace
        assert (
            issuer.issued[-1]["trace_id"] == f"f-{i}"
            and issuer.issued[-1]["rewriter"] == "watermark/template"
        )
        if behaviour == "hang":
            assert step.guard == ("timeout" if i < 2 else "skipped") and step.protected_fallback
            assert "protected fallback" in step.detail
        else:  # the step caught the LLM's failure itself and used the template
            assert step.guard == "preserved" and not step.protected_fallback
    assert len(issuer.issued) == 4
    assert pipeline.registry.get("watermark") is WatermarkRewriter  # never taken out of service


class Hangs(WatermarkRewriter):
    """A watermark whose own rewrite hangs (the fallback is the inherited template weave)."""

    name = "hangs"

    def rewrite(self, trace, context):
        RELEASE.wait(30)
        return trace


class Garbles(WatermarkRewriter):
    name = "garbles"

    def rewrite(self, trace, context):
        return trace.replace("#### 17", "#### 18")  # the guard refuses every attempt


class BrokenFallback(WatermarkRewriter):
    name = "broken-fallback"

    def rewrite(self, trace, context):
        raise ValueError("boom")

    def fallback(self, trace, context):
        return trace.replace("#### 17", "#### 99")


class NothingToProtect(Rewriter):
    name = "nothing"

    def rewrite(self, trace, context):
        raise RewriterError("cannot")

    def fallback(self, trace, context):
        raise RewriterError("no issuer")


@pytest.mark.parametrize("cls", [Hangs, Garbles])
def test_timeouts_and_guard_failures_take_the_protected_fallback(h, cls):
    issuer = h.FakeIssuer()
    pipeline = RewritePipeline(RewriterRegistry.from_classes(cls), timeout_s=0.3)
    ctx = RewriteContext(account="acme", trace_id="t-1", signatures=issuer)
    result = pipeline.run(TRACE, names=[cls.name], options={cls.name: {"fraction": 1.0}}, context=ctx)
    assert result.steps[0].guard == ("timeout" if cls is Hangs else "fell_back")
    assert result.steps[0].protected_fallback and len(_signed_by(issuer, result.trace)) == 1
    assert [i["trace_id"] for i in issuer.issued] == ["t-1"]


def test_unselected_traces_take_the_fallback_unsigned_and_unrecorded(h):
    issuer = h.FakeIssuer()
    pipeline = RewritePipeline(RewriterRegistry.from_classes(Garbles))
    ctx = RewriteContext(account="acme", trace_id="t-2", signatures=issuer)
    result = pipeline.run(TRACE, names=["garbles"], options={"garbles": {"fraction": 0.0}}, context=ctx)
    assert result.trace == TRACE and result.steps[0].protected_fallback and issuer.issued == []


def test_a_broken_protected_fallback_fails_the_run_instead_of_delivering_the_input(h):
    pipeline = RewritePipeline(RewriterRegistry.from_classes(BrokenFallback))
    ctx = RewriteContext(account="acme", trace_id="t-3", signatures=h.FakeIssuer())
    with pytest.raises(RewriterFailed, match="protected fallback changed the answer"):
        pipeline.run(TRACE, names=["broken-fallback"], context=ctx)


def test_a_failing_ledger_write_fails_the_run(h):
    class DownIssuer(h.FakeIssuer):
        def record_issue(self, **kwargs):
            raise ConnectionError("ledger down")

    pipeline = RewritePipeline(RewriterRegistry.from_classes(WatermarkRewriter))
    ctx = RewriteContext(account="acme", trace_id="t-4", signatures=DownIssuer())
    with pytest.raises(RewriterFailed, match="could not be accepted"):
        pipeline.run(TRACE, names=["watermark"], options={"watermark": {"fraction": 1.0}}, context=ctx)


def test_nothing_to_protect_with_passes_the_input_on_with_the_reason():
    result = RewritePipeline(RewriterRegistry.from_classes(NothingToProtect)).run(TRACE, names=["nothing"])
    assert result.trace == TRACE and not result.steps[0].protected_fallback
    assert result.steps[0].guard == "error" and "RewriterError: cannot" in result.steps[0].detail
    assert "no issuer" in result.steps[0].detail


def test_rewriters_without_a_fallback_still_pass_their_input_on():
    class Raises(IdentityRewriter):
        name = "raises"

        def rewrite(self, trace, context):
            raise ValueError("x")

    result = RewritePipeline(RewriterRegistry.from_classes(Raises)).run(TRACE, names=["raises"])
    assert (
        result.trace == TRACE and result.steps[0].guard == "error" and not result.steps[0].protected_fallback
    )


def test_llm_mode_asks_the_llm_for_every_trace_signed_or_not(h):
    issuer = h.FakeIssuer()
    llm = _llm(h, "refuse")
    signed = 0
    for i in range(40):
        out = WatermarkRewriter().rewrite(TRACE, _context(issuer, llm, f"u-{i}", fraction=0.5))
        signed += out != TRACE
    assert 5 < signed < 35 and len(llm.calls) == 40  # the same work whether the trace is signed or not


def test_template_is_the_default_even_with_an_llm_configured(h):
    issuer = h.FakeIssuer()
    llm = _llm(h, "refuse")
    policy = WatermarkPolicy(fraction=1.0)  # a server's policy: mode "template" unless configured
    ctx = RewriteContext(account="acme", trace_id="d-1", llm=llm, signatures=issuer, watermark_policy=policy)
    out = WatermarkRewriter(WatermarkRewriter.parse_options({"mode": "llm"})).rewrite(TRACE, ctx)
    assert len(_signed_by(issuer, out)) == 1 and llm.calls == []
    ctx = RewriteContext(account="acme", trace_id="d-2", llm=llm, signatures=issuer)
    WatermarkRewriter().rewrite(TRACE, ctx)  # "auto" without a policy: the template
    assert llm.calls == []
