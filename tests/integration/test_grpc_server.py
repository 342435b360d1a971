"""Every implemented RPC over a real socket, plus health, reflection and the error contract."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tracemark.server.app import TracemarkServer
from tracemark.server.client import Stubs, open_channel
from tracemark.server.teacher.base import Generation, TeacherBackend, TeacherInfo
from tracemark.v1 import common_pb2, forensics_pb2, rewrite_pb2, teacher_pb2

from .conftest import TOKENS, make_settings, token_store

PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_generate_returns_trace_answer_and_pipeline(alice):
    response = alice.teacher.Generate(teacher_pb2.GenerateRequest(problem=PROBLEM), timeout=60)
    assert response.trace_id and response.completion_tokens > 0
    assert [r.name for r in response.rewriters] == ["identity"]
    assert response.rewriters[0].guard in (
        common_pb2.GUARD_OUTCOME_PRESERVED,
        common_pb2.GUARD_OUTCOME_NO_ANSWER,
    )
    assert response.answer_preserved


def test_generate_stream_ends_with_done_and_text_adds_up(alice):
    events = list(
        alice.teacher.GenerateStream(teacher_pb2.GenerateStreamRequest(problem=PROBLEM), timeout=60)
    )
    assert events[-1].HasField("done")
    assert all(not e.HasField("done") for e in events[:-1])
    streamed = "".join(e.text_delta for e in events)
    assert streamed.strip() == events[-1].done.trace


def test_teacher_info_reports_quantization_in_effect(alice):
    info = alice.teacher.GetTeacherInfo(teacher_pb2.GetTeacherInfoRequest(), timeout=10)
    assert (info.backend, info.quantization, info.device) == ("tiny", "none", "cpu")
    assert info.parameter_bytes > 0 and list(info.default_rewriters) == ["identity"]


def test_rewrite_and_list_rewriters(alice):
    trace = "3 + 5 = 8 apples.\n#### 8"
    response = alice.rewrite.Rewrite(
        rewrite_pb2.RewriteRequest(trace=trace, rewriters=["identity"]), timeout=10
    )
    assert response.trace == trace and response.final_answer == "8" and response.answer_preserved
    listing = alice.rewrite.ListRewriters(rewrite_pb2.ListRewritersRequest(), timeout=10)
    identity = {r.name: r for r in listing.rewriters}["identity"]
    assert identity.status == rewrite_pb2.PLUGIN_STATUS_LOADED
    assert identity.distribution == "tracemark" and identity.options_schema_json.startswith("{")


def test_health_and_reflection(running_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{running_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "tracemark.v1.TeacherService", "tracemark.v1.RewriteService"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {
        "tracemark.v1.TeacherService",
        "tracemark.v1.RewriteService",
        "tracemark.v1.ForensicsService",
        "grpc.health.v1.Health",
    } <= names
    channel.close()


def test_authentication_is_required(running_server, anonymous):
    request = teacher_pb2.GenerateRequest(problem=PROBLEM)
    assert _code(lambda: anonymous.teacher.Generate(request, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = Stubs(open_channel(f"127.0.0.1:{running_server.port}", token="tm_not_a_token"))
    assert _code(lambda: wrong.teacher.Generate(request, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    stream = anonymous.teacher.GenerateStream(teacher_pb2.GenerateStreamRequest(problem=PROBLEM), timeout=10)
    assert _code(lambda: list(stream)) == grpc.StatusCode.UNAUTHENTICATED
    wrong.close()


def test_bad_input_gets_precise_codes(alice):
    gen = alice.teacher.Generate
    assert (
        _code(lambda: gen(teacher_pb2.GenerateRequest(problem="  "), timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    long_problem = teacher_pb2.GenerateRequest(problem="x" * 600)  # over max_problem_chars=500
    assert _code(lambda: gen(long_problem, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    huge = teacher_pb2.GenerateRequest(problem="x" * 100_000)  # over max_message_bytes=64 KiB
    assert _code(lambda: gen(huge, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    unknown = teacher_pb2.GenerateRequest(problem=PROBLEM, rewriters=["no-such-rewriter"])
    assert _code(lambda: gen(unknown, timeout=10)) == grpc.StatusCode.NOT_FOUND
    bad_json = teacher_pb2.GenerateRequest(
        problem=PROBLEM, rewriters=["identity"], rewriter_options_json={"identity": "{"}
    )
    assert _code(lambda: gen(bad_json, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_option = teacher_pb2.GenerateRequest(
        problem=PROBLEM, rewriters=["identity"], rewriter_options_json={"identity": '{"nope": 1}'}
    )
    assert _code(lambda: gen(bad_option, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    too_many = teacher_pb2.GenerateRequest(
        problem=PROBLEM, params=teacher_pb2.GenerationParams(max_new_tokens=10**6)
    )
    assert _code(lambda: gen(too_many, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    rewrite = alice.rewrite.Rewrite
    assert (
        _code(lambda: rewrite(rewrite_pb2.RewriteRequest(trace=""), timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        _code(lambda: rewrite(rewrite_pb2.RewriteRequest(trace="1", rewriters=["nope"]), timeout=10))
        == grpc.StatusCode.NOT_FOUND
    )


def test_expired_deadline(alice):
    request = teacher_pb2.GenerateRequest(problem=PROBLEM)
    assert _code(lambda: alice.teacher.Generate(request, timeout=0.0001)) == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server is still fine afterwards.
    assert alice.teacher.Generate(request, timeout=60).trace_id


class _GatedTeacher(TeacherBackend):
    """A teacher that waits for a gate: makes queue-full and deadline behaviour deterministic."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.info = TeacherInfo(model_id="gated", backend="test", quantization="none", max_batch_size=1)

    def generate_batch(self, conversations, params, on_text=None):
        self.gate.wait(30)
        return [Generation(text="3 + 5 = 8\n#### 8", completion_tokens=5) for _ in conversations]


def test_not_serving_until_warm_then_queue_bounds_and_deadlines(tmp_path):
    teacher = _GatedTeacher()
    settings = make_settings(tmp_path, teacher={"max_batch_size": 1, "max_queue": 2, "batch_window_ms": 0})
    server = TracemarkServer(settings, teacher=teacher, tokens=token_store(), open_ledger=False)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    stubs = Stubs(open_channel(f"127.0.0.1:{port}", token=TOKENS["bob"]))
    try:
        check = health_pb2.HealthCheckRequest(service="tracemark.v1.TeacherService")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        request = teacher_pb2.GenerateRequest(problem=PROBLEM)
        assert _code(lambda: stubs.teacher.Generate(request, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        teacher.gate.set()
        assert server.wait_ready(10)
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        teacher.gate.clear()
        # One job in the teacher, one queued.
        pending = [stubs.teacher.Generate.future(request, timeout=30) for _ in range(2)]
        time.sleep(0.5)
        # A deadline that passes while queued is honoured, not waited out.
        started = time.monotonic()
        assert (
            _code(lambda: stubs.teacher.Generate(request, timeout=0.5)) == grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert time.monotonic() - started < 5
        # The queue (max 2) holds the waiting job and the cancelled one until the worker drops it.
        assert _code(lambda: stubs.teacher.Generate(request, timeout=5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        teacher.gate.set()
        assert all(f.result().final_answer == "8" for f in pending)
    finally:
        teacher.gate.set()
        stubs.close()
        channel.close()
        server.stop(grace=1)


def test_forensics_reports_errors(compliance):
    missing = forensics_pb2.GetReportRequest(report_id="no-such-report")
    assert _code(lambda: compliance.forensics.GetReport(missing, timeout=10)) == grpc.StatusCode.NOT_FOUND
    empty = forensics_pb2.VerifyReportRequest()
    code = _code(lambda: compliance.forensics.VerifyReport(empty, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    bad = forensics_pb2.InvestigateRequest(suspect="ftp:nowhere")
    code = _code(lambda: list(compliance.forensics.Investigate(bad, timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
