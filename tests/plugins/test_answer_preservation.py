"""Acceptance: ``restructure`` and the deterministic ``watermark`` path preserve 100% of answers.

Traces are GSM8K train reference solutions (``../shared/data/gsm8k/train.jsonl``, first 200 problems; skipped
when the shared file is absent) and a procedural set in three styles that always runs.
"""

from __future__ import annotations

import random

import pytest
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline


@pytest.fixture(scope="module")
def pipeline():
    return RewritePipeline(RewriterRegistry.discover(strict=False, allowlist=[]), timeout_s=30)


def _check(pipeline, issuer, items):
    """Run restructure,watermark (every trace signed) on (problem, trace, gold) items; return counts."""
    texts = {}
    for i, (problem, trace, gold) in enumerate(items):
        account = f"acct-{i % 4}"
        texts.setdefault(account, [p.text for p in issuer.pairs_for(account)])
        ctx = RewriteContext(
            problem=problem, account=account, trace_id=f"gsm-{i}", rng=random.Random(i),
            signatures=issuer,
        )  # fmt: skip
        result = pipeline.run(
            trace,
            names=["restructure", "watermark"],
            options={"watermark": {"fraction": 1.0, "mode": "template"}},
            context=ctx,
        )
        assert [s.guard for s in result.steps] == ["preserved", "preserved"], (trace, result.steps)
        assert result.answer_preserved and answers_match(gold, result.final_answer), (trace, result.trace)
        assert result.trace != trace  # actually restructured: only formal lines remain
        restructured = [ln for ln in result.trace.splitlines() if not any(t in ln for t in texts[account])]
        assert all(line.startswith(("(", "∵", "∴", "#### ")) for line in restructured), result.trace
        assert sum(t in result.trace for t in texts[account]) == 1  # exactly one pair woven in
    assert len(issuer.issued) == len(items)


def test_gsm8k_reference_solutions_keep_every_answer(pipeline, h):
    rows = h.gsm8k_rows(200)
    if len(rows) < 200:
        pytest.skip("GSM8K train data not available at ../shared/data/gsm8k/train.jsonl")
    items = [(r["question"], r["answer"], extract_final_answer(r["answer"])) for r in rows]
    _check(pipeline, h.FakeIssuer(), items)


def test_procedural_traces_keep_every_answer(pipeline, h):
    _check(pipeline, h.FakeIssuer(), h.procedural_traces(90, seed=11))
