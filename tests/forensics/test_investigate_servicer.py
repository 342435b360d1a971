"""ForensicsService.Investigate builds InvestigationParams from the request: bad parameters and specs are
INVALID_ARGUMENT with the parameter's message, suspects outside the ``[forensics]`` allowlist are
PERMISSION_DENIED, good ones stream progress and end with the result."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from tracemark.server.config import load_settings
from tracemark.server.servicers.forensics import ForensicsServicer
from tracemark.v1 import forensics_pb2


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code = self.details = None

    def is_active(self) -> bool:
        return True

    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted(details)


def _servicer(issuer, engine, master, **forensics):
    settings = load_settings(overrides={"forensics": forensics})
    return ForensicsServicer(SimpleNamespace(engine=engine, master=master, issuer=issuer, settings=settings))


@pytest.fixture
def servicer(issuer, engine, master, tiny_model_dir):
    for p in issuer.pairs_for("alice"):
        issuer.record_issue(account="alice", trace_id=f"t-{p.index}", pair=p, rewriter="watermark")
    return _servicer(issuer, engine, master, model_roots=[tiny_model_dir.parent])


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"alpha": 2.0}, "alpha must be in (0, 1)"),
        ({"mode": "grey"}, "mode must be one of"),
        ({"correction": "bonf"}, "correction must be holm or fdr_bh"),
        ({"query_budget": -1}, "query_budget must be a non-negative integer"),
        ({"accounts": [" "]}, "account names must be non-empty"),
        ({"suspect": "ftp:nowhere"}, "unknown suspect kind"),
        ({"suspect": ""}, "empty suspect spec"),
        ({"accounts": ["ghost"]}, "'ghost' cannot be investigated"),
    ],
)
def test_bad_request_is_invalid_argument(servicer, tiny_model_dir, fields, fragment):
    request = forensics_pb2.InvestigateRequest(**{"suspect": f"hf:{tiny_model_dir}", **fields})
    context = FakeContext()
    with pytest.raises(Aborted):
        list(servicer.Investigate(request, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and fragment in context.details


def test_good_request_streams_progress_and_the_result(servicer, tiny_model_dir):
    request = forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}", mode="white-box")
    events = list(servicer.Investigate(request, FakeContext()))
    assert all(e.HasField("progress") for e in events[:-1]) and events[-1].HasField("result")
    result = events[-1].result
    assert result.verdict == forensics_pb2.VERDICT_NOT_DETECTED and result.report_id.startswith("tmr-")
    assert [a.account for a in result.accounts] == ["alice"] and result.accounts[0].pairs == 2
    assert result.registration_seq >= 1 and result.prior_registrations == 0


@pytest.mark.parametrize("roots", [[], ["elsewhere"]])
def test_local_suspect_outside_model_roots_is_permission_denied(
    issuer, engine, master, tiny_model_dir, roots
):
    servicer = _servicer(issuer, engine, master, model_roots=roots)
    context = FakeContext()
    with pytest.raises(Aborted):
        list(servicer.Investigate(forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}"), context))
    assert context.code == grpc.StatusCode.PERMISSION_DENIED
    assert "suspect not in [forensics] allowlist" in context.details


def test_a_bare_runtime_allows_no_suspect(issuer, engine, master, tiny_model_dir):
    servicer = ForensicsServicer(SimpleNamespace(engine=engine, master=master, issuer=issuer))
    context = FakeContext()
    with pytest.raises(Aborted):
        list(servicer.Investigate(forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}"), context))
    assert context.code == grpc.StatusCode.PERMISSION_DENIED


def test_result_carries_the_channel_tests(issuer, engine, master, tiny_model_dir):
    """With the channel logged, the result names the provider test and each account's channel p."""
    from tracemark.foundation.channel import ChannelSpec, tokenizer_fingerprint
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    issuer.attach_channel(ChannelSpec(tokenizer=tokenizer_fingerprint(tok)))
    issuer.ensure_channel_account("alice")
    servicer = _servicer(issuer, engine, master, model_roots=[tiny_model_dir.parent])
    request = forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}", mode="white-box")
    result = list(servicer.Investigate(request, FakeContext()))[-1].result
    assert result.provider_tested and not result.distilled_from_us
    assert 0 < result.provider_p_value <= 1 and result.provider_adjusted_p_value >= result.provider_p_value
    (alice,) = result.accounts
    assert alice.channel_tested and 0 < alice.channel_p_value <= 1 and alice.pairs == 0
