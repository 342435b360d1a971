"""Issue 11, denial of service and errors, replayed over gRPC: adversarial traces answered in linear time,
JSON options bounded, undecodable messages INVALID_ARGUMENT (never INTERNAL, no ERROR line per request),
server-owned options refused."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest
from tracemark.server.app import TracemarkServer
from tracemark.server.client import Stubs, open_channel
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.v1 import rewrite_pb2, teacher_pb2

from .conftest import TOKENS, make_settings, token_store

N = 64_000
TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\n#### 12"


def _fill(unit: str) -> str:
    return (unit * (N // len(unit) + 1))[:N]


ADVERSARIAL = {
    "boxed_open": _fill("\\boxed{"),
    "boxed_nested": "\\boxed{" * 4000 + "1" + "}" * 4000,
    "braces": _fill("{"),
    "digits": _fill("1234567890"),
    "hashes": _fill("#### \n"),
    "annotations": _fill("<<1+"),
    "unicode_digits": _fill("١٢٣٤٥٦٧٨٩"),
    "one_line": _fill("a b "),
    "tiny_lines": _fill("x\n"),
    "equations": _fill("1 = "),
    "text_commands": "\\boxed{" + _fill("\\text{")[:-8] + "}",
    "mixed": _fill("Natalia sold 48/2 = <<48/2=24>>24 clips. \\boxed{1{2} #### 3\n"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dos")
    settings = make_settings(
        tmp,
        server={"max_message_bytes": 1 << 20, "max_trace_chars": N},
        rewrite={"default_pipeline": ["restructure", "watermark"], "mandatory": ["watermark"]},
    )
    server = TracemarkServer(settings, teacher=ReferenceTeacher({}), tokens=token_store())
    server.start()
    assert server.wait_ready(30)
    yield server
    server.stop(grace=0)


@pytest.fixture
def alice(server):
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKENS["alice"]))
    yield stubs
    stubs.close()


LINEAR_BOUND_S = 5.0


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_64k_trace_is_answered_within_a_second(alice, name):
    trace = ADVERSARIAL[name]
    assert len(trace) == N or name in ("boxed_nested", "text_commands")
    started = time.perf_counter()
    reply = alice.rewrite.Rewrite(rewrite_pb2.RewriteRequest(trace=trace), timeout=30)
    took = time.perf_counter() - started
    print(f"\n{name}: Rewrite restructure,watermark of {len(trace)} chars in {took * 1000:.0f} ms")
    assert [r.name for r in reply.rewriters] == ["restructure", "watermark"]
    # The < 1 s figure is measured and reported (README, Security); the test guards against superlinear
    # parsing with a margin a loaded CI runner cannot break (the quadratic parsers took 30-340 s here).
    assert took < LINEAR_BOUND_S


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 1000 + "]" * 1000,  # Python's json raised RecursionError -> INTERNAL
        '{"a":' * 40 + "1" + "}" * 40,  # parses, but deeper than 32
        "[" * 30_000,  # unbalanced and deep
        "1" * 5000,  # more digits than int() converts
        json.dumps({"mode": "x" * 40_000}),  # over the size bound
        "{not json",
        "[1, 2]",  # not an object
    ],
    ids=["deep-1000", "deep-40", "unbalanced", "huge-int", "huge", "garbage", "array"],
)
def test_bad_json_options_are_invalid_argument(alice, raw):
    request = rewrite_pb2.RewriteRequest(
        trace=TRACE, rewriters=["restructure"], rewriter_options_json={"restructure": raw}
    )
    code, details = _status(lambda r=request: alice.rewrite.Rewrite(r, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert len(details) < 200  # nothing long is echoed back
    generate = teacher_pb2.GenerateRequest(problem="1+1?", rewriter_options_json={"watermark": raw})
    assert (
        _status(lambda: alice.teacher.Generate(generate, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_bad_pipeline_names_are_invalid_argument(alice):
    for names in (["x" * 100_000], ["identity"] * 17, ["Not A Name"], ["unknown-one"]):
        request = rewrite_pb2.RewriteRequest(trace=TRACE, rewriters=names)
        code, details = _status(lambda r=request: alice.rewrite.Rewrite(r, timeout=10))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) and len(details) < 300
    many = {f"r{i}": "{}" for i in range(17)}
    request = rewrite_pb2.RewriteRequest(trace=TRACE, rewriter_options_json=many)
    assert _status(lambda: alice.rewrite.Rewrite(request, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_watermark_fraction_is_the_servers_policy(alice, server):
    """Options mean what they say: the fraction is read-only in the schema; changing it is refused."""
    listing = alice.rewrite.ListRewriters(rewrite_pb2.ListRewritersRequest(), timeout=10)
    schema = json.loads({r.name: r for r in listing.rewriters}["watermark"].options_schema_json)
    assert schema["properties"]["fraction"]["readOnly"] is True
    policy = server.settings.rewrite.watermark_fraction
    for value in (0.0, 1.0, "0.1", None):
        options = {"watermark": json.dumps({"fraction": value})}
        request = rewrite_pb2.RewriteRequest(trace=TRACE, rewriter_options_json=options)
        code, details = _status(lambda r=request: alice.rewrite.Rewrite(r, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, value
        assert value is None or "server's policy" in details  # None fails the option's own type first
    same = rewrite_pb2.RewriteRequest(
        trace=TRACE, rewriter_options_json={"watermark": json.dumps({"fraction": policy})}
    )
    assert alice.rewrite.Rewrite(same, timeout=10).answer_preserved


@pytest.mark.parametrize("token", [TOKENS["alice"], None], ids=["with-token", "without-token"])
def test_undecodable_messages_are_invalid_argument_and_not_logged_per_request(server, token, caplog):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    garbage = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", b"\x12\x05abc", bytes(range(256))]
    methods = [
        "/tracemark.v1.RewriteService/Rewrite",
        "/tracemark.v1.TeacherService/Generate",
        "/tracemark.v1.ForensicsService/GetReport",
        "/tracemark.v1.RewriteService/ListRewriters",
    ]
    codes = []
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            for method in methods:
                call = channel.unary_unary(method)  # raw bytes in, raw bytes out
                for data in garbage:
                    with pytest.raises(grpc.RpcError) as info:
                        call(data, metadata=metadata, timeout=5)
                    codes.append(info.value.code())
    channel.close()
    # With a token: INVALID_ARGUMENT (some garbage happens to decode as a ListRewritersRequest, which has
    # no fields: that call may succeed-with-error otherwise, never INTERNAL/UNKNOWN). Without one the
    # server rejects before decoding anything: UNAUTHENTICATED.
    expected = grpc.StatusCode.INVALID_ARGUMENT if token else grpc.StatusCode.UNAUTHENTICATED
    assert codes.count(expected) >= 3 * len(codes) // 4
    assert not set(codes) & {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
    if not token:
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    undecodable_lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(undecodable_lines) <= 1  # rate-limited: at most one line a minute for 160 bad requests
