"""The ``watermark`` rewriter: keyed selection, balanced pairs, template and LLM weaving, ledger records."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.api import (
    IssueCounts,
    RewriteContext,
    RewriterError,
    SignatureService,
    WatermarkPolicy,
)
from tracemark.plugins.builtin.restructure import RestructureRewriter
from tracemark.plugins.builtin.watermark import (
    WatermarkRewriter,
    is_selected,
    llm_weave_ok,
    weave_template,
)
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17"


def _numbers(text):
    return Counter(re.findall(r"\d+", text))


def _only_inserted(original, woven):
    """Whether ``woven`` is ``original`` with text inserted (every character kept, in order)."""
    rest = iter("".join(woven.split()))
    return all(ch in rest for ch in "".join(original.split()))  # a subsequence, whitespace aside


def _run(rewriter, trace, context):
    out = rewriter.rewrite(trace, context)
    rewriter.accepted(out, context)
    return out


def _watermark(**options):
    return WatermarkRewriter(WatermarkRewriter.parse_options(options))


def test_anonymous_callers_get_no_watermark(fake_issuer):
    ctx = RewriteContext(account=None, trace_id="t", signatures=fake_issuer)
    assert _run(_watermark(fraction=1.0), TRACE, ctx) == TRACE
    assert ctx.notes == ["anonymous caller: no watermark"] and fake_issuer.issued == []


def test_missing_issuer_is_a_clear_error():
    with pytest.raises(RewriterError, match="needs a signature issuer"):
        _watermark(fraction=1.0).rewrite(TRACE, RewriteContext(account="alice", trace_id="t"))


def test_template_weaving_keeps_numbers_and_final_line(fake_issuer):
    ctx = RewriteContext(account="alice", trace_id="t-1", signatures=fake_issuer)
    out = _run(_watermark(fraction=1.0, mode="template"), TRACE, ctx)
    texts = [p.text for p in fake_issuer.pairs_for("alice")]
    woven = [t for t in texts if t in out]
    assert len(woven) == 1
    assert out.splitlines()[-1] == "#### 17" and extract_final_answer(out) == "17"
    assert not (_numbers(TRACE) - _numbers(out))  # every original number is still there
    assert _only_inserted(TRACE, out)
    pair_ids = {p.pair_id for p in fake_issuer.pairs_for("alice")}
    assert [(i["account"], i["trace_id"], i["rewriter"]) for i in fake_issuer.issued] == [
        ("alice", "t-1", "watermark/template")
    ]
    assert fake_issuer.issued[0]["pair_id"] in pair_ids


@pytest.mark.parametrize(
    ("trace", "answer"),
    [
        ("#### 5", "5"),
        ("The total is 2 + 3 = 5.", "5"),
        ("First 2 + 3 = 5. Then 5 * 2 = 10. So \\boxed{10}.", "10"),
        ("(1) 24 ⟸ 48/2\n(2) 72 ⟸ 48+24\n#### 72", "72"),
    ],
)
def test_template_never_changes_the_answer(trace, answer):
    for variant in range(6):
        out = weave_template(trace, "x137 = 4821", variant=variant)
        assert "x137 = 4821" in out and extract_final_answer(out) == answer


def test_answerless_traces_are_not_signed(fake_issuer):
    ctx = RewriteContext(account="zed", trace_id="n-1", signatures=fake_issuer)
    assert _run(_watermark(fraction=1.0), "I could not solve it.", ctx) == "I could not solve it."
    assert fake_issuer.issued == []


def test_formal_traces_get_formal_insertions():
    seen = set()
    for variant in range(40):
        out = weave_template(
            "(1) 24 ⟸ 48/2 ▹ half the clips\n(2) 72 ⟸ 48+24\n#### 72", "q12 = 0042", variant=variant
        )
        line = next(ln for ln in out.splitlines() if "q12 = 0042" in ln)
        assert any(mark in line for mark in "▹∵∴•(["), line  # the trace's own notation
        assert not re.search(r"\b(?:aux|Let|Auxiliary)\b", line)
        assert out.splitlines()[-1] == "#### 72" and extract_final_answer(out) == "72"
        seen.add(line.replace("q12 = 0042", "P"))
    assert len(seen) >= 10  # no fixed label


def test_selection_rate_matches_fraction_and_is_reproducible(fake_issuer):
    pairs = fake_issuer.pairs_for("alice")
    n, fraction = 4000, 0.1
    chosen = [is_selected(pairs, f"trace-{i}", fraction) for i in range(n)]
    rate = sum(chosen) / n
    sd = math.sqrt(fraction * (1 - fraction) / n)
    assert abs(rate - fraction) < 4 * sd
    assert chosen == [is_selected(pairs, f"trace-{i}", fraction) for i in range(n)]
    other = [is_selected(fake_issuer.pairs_for("bob"), f"trace-{i}", fraction) for i in range(n)]
    assert other != chosen  # keyed by the account's secret pairs
    assert not any(is_selected(pairs, f"trace-{i}", 0.0) for i in range(200))
    assert all(is_selected(pairs, f"trace-{i}", 1.0) for i in range(200))


def test_fraction_through_the_rewriter(fake_issuer):
    rewriter = _watermark(fraction=0.25)
    signed = 0
    for i in range(800):
        ctx = RewriteContext(account="carol", trace_id=f"id-{i}", signatures=fake_issuer)
        signed += _run(rewriter, TRACE, ctx) != TRACE
    assert signed == len(fake_issuer.issued)
    assert abs(signed / 800 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 800)


def test_balanced_selection_gives_equal_exposure(h):
    issuer = h.FakeIssuer(pairs_per_account=3)
    for i in range(61):
        ctx = RewriteContext(account="dave", trace_id=f"b-{i}", signatures=issuer)
        _run(_watermark(fraction=1.0), TRACE, ctx)
    counts = sorted(issuer.issued_counts("dave").values())
    assert counts == [20, 20, 21]


def test_keyed_selection_without_counts_uses_every_pair(h):
    issuer = h.FakeIssuer(pairs_per_account=2, counts=False)
    for i in range(200):
        ctx = RewriteContext(account="erin", trace_id=f"k-{i}", signatures=issuer)
        _run(_watermark(fraction=1.0, selection="balanced"), TRACE, ctx)
    per_pair = Counter(item["pair_id"] for item in issuer.issued)
    assert len(per_pair) == 2 and min(per_pair.values()) > 60


def test_pair_is_recorded_only_when_the_output_is_accepted(fake_issuer):
    ctx = RewriteContext(account="frank", trace_id="r-1", signatures=fake_issuer)
    rewriter = _watermark(fraction=1.0)
    out = rewriter.rewrite(TRACE, ctx)
    assert fake_issuer.issued == []
    rewriter.accepted(TRACE, ctx)  # the host delivered something else (e.g. a fallback)
    assert fake_issuer.issued == []
    rewriter.accepted(out, ctx)
    assert len(fake_issuer.issued) == 1


def test_host_policy_overrides_request_options(fake_issuer):
    policy = WatermarkPolicy(fraction=1.0)
    ctx = RewriteContext(account="gina", trace_id="p-1", signatures=fake_issuer, watermark_policy=policy)
    assert _run(_watermark(fraction=0.0), TRACE, ctx) != TRACE


def test_llm_weaving_is_used_when_it_keeps_everything(fake_issuer, h):
    def respond(messages, i):
        text = messages[-1]["content"].split("Definition to insert: ", 1)[1].split("\n", 1)[0]
        lines = TRACE.splitlines()
        return "Sure, here it is:\n" + "\n".join([f"Let {text} be our auxiliary count.", *lines])

    llm = h.ScriptedLLM(respond)
    ctx = RewriteContext(account="hal", trace_id="l-1", llm=llm, signatures=fake_issuer)
    out = _run(_watermark(fraction=1.0, mode="llm"), TRACE, ctx)
    assert out.startswith("Let ") and "auxiliary count" in out and not out.startswith("Sure")
    assert fake_issuer.issued[0]["rewriter"] == "watermark/llm"
    system = llm.calls[0]["messages"][0]["content"]
    assert "exactly as given" in system


@pytest.mark.parametrize(
    "reply",
    [
        lambda t: TRACE.replace("12 + 5", "12 + 6"),  # pair missing and a number changed
        lambda t: f"{t}\n" + TRACE.replace("#### 17", "#### 18"),  # answer changed
        lambda t: f"{t}\n" + TRACE.replace("<<3*4=12>>12", "<<3*4=12>>"),  # a number dropped
        lambda t: RuntimeError("backend down"),
    ],
)
def test_bad_llm_weaves_fall_back_to_the_template(fake_issuer, h, reply):
    def respond(messages, i):
        text = messages[-1]["content"].split("Definition to insert: ", 1)[1].split("\n", 1)[0]
        return reply(text)

    ctx = RewriteContext(account="ivy", trace_id="l-2", llm=h.ScriptedLLM(respond), signatures=fake_issuer)
    out = _run(_watermark(fraction=1.0, mode="llm"), TRACE, ctx)
    assert fake_issuer.issued[0]["rewriter"] == "watermark/template"
    assert extract_final_answer(out) == "17" and out.splitlines()[-1] == "#### 17"


def test_llm_mode_without_llm_is_an_error(fake_issuer):
    ctx = RewriteContext(account="jo", trace_id="l-3", signatures=fake_issuer)
    with pytest.raises(RewriterError, match="mode 'llm' needs an LLM backend"):
        _watermark(fraction=1.0, mode="llm").rewrite(TRACE, ctx)


def test_llm_weave_checks():
    text = "x1 = 0001"
    assert llm_weave_ok(TRACE, f"{text}\n{TRACE}", text) == ""
    assert llm_weave_ok(TRACE, TRACE, text) == "pair text missing"
    assert llm_weave_ok(TRACE, f"{text}\n" + TRACE + "\nextra", text) == "final line changed"


@pytest.fixture
def real_issuer(tmp_path, monkeypatch):
    for var in ("TRACEMARK_MASTER_KEY", "TRACEMARK_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield SignatureIssuer(
        master=MasterSecret.load(path=tmp_path / "master.key"), engine=engine, pairs_per_account=2
    )
    engine.dispose()


def test_the_forensics_issuer_is_a_signature_service(real_issuer, fake_issuer):
    # structural: tracemark.plugins never imports tracemark.forensics
    assert isinstance(real_issuer, SignatureService) and isinstance(real_issuer, IssueCounts)
    assert isinstance(fake_issuer, SignatureService)
    pair = real_issuer.pairs_for("acme")[0]
    assert isinstance(pair.pair_id, str) and isinstance(pair.text, str)


def test_with_the_real_signature_issuer_and_ledger(real_issuer):
    registry = RewriterRegistry.from_classes(RestructureRewriter, WatermarkRewriter)
    pipeline = RewritePipeline(registry)
    texts = {p.text for p in real_issuer.pairs_for("acme")}
    for i in range(10):
        ctx = RewriteContext(account="acme", trace_id=f"real-{i}", signatures=real_issuer)
        result = pipeline.run(
            TRACE, names=["restructure", "watermark"], options={"watermark": {"fraction": 1.0}}, context=ctx
        )
        assert result.answer_preserved and sum(t in result.trace for t in texts) == 1
    counts = real_issuer.issued_counts("acme")
    assert sorted(counts.values()) == [5, 5] and set(counts) == {
        p.pair_id for p in real_issuer.pairs_for("acme")
    }
