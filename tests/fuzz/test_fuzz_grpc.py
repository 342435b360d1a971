"""Property-based fuzzing of every tracemark.v1 RPC over a real socket (issue 11, item 7).

Each property sends hypothesis-generated requests (valid-shaped, malformed, raw bytes, wrong credentials,
tiny deadlines, bursts) and checks every answer against the oracle in ``calls.py``: never INTERNAL or
UNKNOWN, the precise status the contract gives, no secret in any answer. After every test the server must
still be SERVING and its log must hold no secret and no ERROR record (bad input is not a server fault).
The fast run here is a few hundred requests; ``make fuzz`` runs the long one (test_fuzz_long.py).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracemark.v1 import forensics_pb2, rewrite_pb2, teacher_pb2

from .calls import (
    MESSAGES,
    RPCS,
    SERVICE_OF,
    VALID_REWRITERS,
    Call,
    bearer,
    caller_of,
    calls,
    check,
    deep_json,
    send,
    send_all,
    watermark_fraction_call,
)
from .conftest import TOKENS

C = grpc.StatusCode
FAST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=20,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@pytest.fixture(scope="module")
def channel(fuzz_server):
    ch = grpc.insecure_channel(fuzz_server.address, options=[("grpc.max_receive_message_length", 8 << 20)])
    yield ch
    ch.close()


def test_every_rpc_is_fuzzed_and_the_oracle_knows_the_rewriters(fuzz_server, channel):
    assert set(MESSAGES) == set(RPCS), "a new RPC needs a strategy in calls.MESSAGES"
    listing = send(channel, Call("ListRewriters", b"", "customer", bearer("customer")))
    assert listing.code == C.OK, listing.details
    loaded = {
        r.name
        for r in rewrite_pb2.ListRewritersResponse.FromString(listing.responses[0]).rewriters
        if r.status == rewrite_pb2.PLUGIN_STATUS_LOADED
    }
    assert set(VALID_REWRITERS) <= loaded


@pytest.mark.parametrize("rpc", list(RPCS))
@FAST
@given(data=st.data())
def test_valid_shaped_and_malformed_fields_get_precise_codes(fuzz_server, channel, rpc, data):
    """Random field values (huge, deep JSON, unicode, NUL, negative/huge numbers, empty) from the role that
    may call the RPC: the exact code for each fault, OK when there is none."""
    call = data.draw(calls(rpcs=(rpc,), who=caller_of(rpc), raw_share=0.0))
    check(fuzz_server, send(channel, call))


@pytest.mark.parametrize("rpc", list(RPCS))
@settings(FAST, max_examples=10)
@given(data=st.data())
def test_undecodable_bytes_are_invalid_argument(fuzz_server, channel, rpc, data):
    """Raw bytes as the request (random, truncated, mutated, bad UTF-8): INVALID_ARGUMENT when they do not
    decode, the field oracle when they happen to."""
    call = data.draw(calls(rpcs=(rpc,), who=caller_of(rpc), raw_share=1.0))
    check(fuzz_server, send(channel, call))


@pytest.mark.parametrize("who", ["none", "bad", "malformed"])
@settings(FAST, max_examples=15)
@given(data=st.data())
def test_missing_or_bad_token_is_unauthenticated(fuzz_server, channel, who, data):
    """No token, unknown tokens, malformed authorization headers: UNAUTHENTICATED for every RPC and any
    payload (raw bytes included), never INTERNAL."""
    check(fuzz_server, send(channel, data.draw(calls(who=st.just(who), raw_share=0.3))))


@pytest.mark.parametrize("rpc", list(RPCS))
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_wrong_role_is_permission_denied(fuzz_server, channel, rpc, data):
    """A customer calling ForensicsService, compliance calling Teacher/Rewrite: PERMISSION_DENIED before
    any work, whatever the payload."""
    wrong = "customer" if SERVICE_OF[rpc] == "ForensicsService" else "compliance"
    check(fuzz_server, send(channel, data.draw(calls(rpcs=(rpc,), who=st.just(wrong), raw_share=0.2))))


@settings(FAST, max_examples=40)
@given(data=st.data(), timeout=st.sampled_from([0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.2]))
def test_zero_and_tiny_deadlines(fuzz_server, channel, data, timeout):
    """Zero and tiny deadlines: DEADLINE_EXCEEDED or the request's own outcome."""
    rpc = data.draw(st.sampled_from(list(RPCS)))
    call = data.draw(calls(rpcs=(rpc,), who=caller_of(rpc), raw_share=0.1))
    call.timeout, call.extra = timeout, frozenset({C.DEADLINE_EXCEEDED})
    check(fuzz_server, send(channel, call))


def _burst_call(rpc: str) -> st.SearchStrategy[Call]:
    return calls(rpcs=(rpc,), who=st.sampled_from(["customer", "compliance", "none"]), raw_share=0.1)


@settings(FAST, max_examples=6)
@given(
    batch=st.lists(
        st.sampled_from(["Generate", "GenerateStream", "Rewrite", *RPCS]).flatmap(_burst_call),
        min_size=8,
        max_size=40,
    )
)
def test_bursts_of_concurrent_calls(fuzz_server, channel, batch):
    """Up to 40 concurrent mixed calls: a full queue may answer RESOURCE_EXHAUSTED, nothing else changes;
    the server is SERVING after each burst."""
    for call in batch:
        if SERVICE_OF[call.rpc] == "TeacherService":
            call.extra = frozenset({C.RESOURCE_EXHAUSTED})
    send_all(fuzz_server, channel, batch, workers=len(batch))
    assert fuzz_server.health() == health_pb2.HealthCheckResponse.SERVING


@settings(FAST, max_examples=10)
@given(fraction=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1)))
def test_server_owned_watermark_fraction_is_refused(fuzz_server, channel, fraction):
    """Item 6: a caller may not set the watermark fraction differently from the server's policy."""
    check(fuzz_server, send(channel, watermark_fraction_call(fraction)))


def test_tokens_reach_their_services(fuzz_server, channel):
    """The fixture's tokens work: a customer may generate, compliance may ask for reports (NOT_FOUND)."""
    gen = teacher_pb2.GenerateRequest(problem="What is 3 + 5?").SerializeToString()
    assert send(channel, Call("Generate", gen, "customer", bearer("customer"))).code == C.OK
    report = forensics_pb2.GetReportRequest(report_id="no-such-report").SerializeToString()
    outcome = send(channel, Call("GetReport", report, "compliance", bearer("compliance")))
    assert outcome.code == C.NOT_FOUND, outcome.details
    assert TOKENS["customer"][0] != TOKENS["compliance"][0]


NASTY_JSON = [
    deep_json(100_000, "array"),
    deep_json(100_000, "object"),
    deep_json(33, "object"),
    '{"fz": ' + "9" * 5_000 + "}",  # past Python's 4,300-digit int parsing limit (ValueError)
    '{"fz": 1e999}',
    '{"fz": NaN}',
    '{"fz_\\ud800": 1}',
    '{"fz": "' + "x" * 200_000 + '"}',
    "{" * 50_000,
]


@pytest.mark.parametrize("nasty", range(len(NASTY_JSON)))
def test_known_nasty_json_in_every_json_field(fuzz_server, channel, nasty):
    """Every JSON-bearing field (rewriter options of Generate/GenerateStream/Rewrite, VerifyReport's
    envelope) with each known-bad JSON: INVALID_ARGUMENT (or OK with valid=False for an envelope)."""
    raw = NASTY_JSON[nasty]
    options = {"identity": raw}
    requests = {
        "Generate": teacher_pb2.GenerateRequest(
            problem="2+2?", rewriters=["identity"], rewriter_options_json=options
        ),
        "GenerateStream": teacher_pb2.GenerateStreamRequest(
            problem="2+2?", rewriters=["identity"], rewriter_options_json=options
        ),
        "Rewrite": rewrite_pb2.RewriteRequest(
            trace="#### 4", rewriters=["identity"], rewriter_options_json=options
        ),
        "VerifyReport": forensics_pb2.VerifyReportRequest(envelope_json=raw),
    }
    for rpc, msg in requests.items():
        role = "compliance" if rpc == "VerifyReport" else "customer"
        check(fuzz_server, send(channel, Call(rpc, msg.SerializeToString(), role, bearer(role))))
