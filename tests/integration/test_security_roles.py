"""Roles over real gRPC (issue 11): a customer token cannot investigate or read reports, and the server does
no work for it; the compliance token can, by full report id only; admin and compliance tokens cannot call
customer services; anonymous callers are customers."""

from __future__ import annotations

import json

import grpc
import pytest
from sqlalchemy import text
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.teacher.local import LocalTeacher
from tracemark.v1 import forensics_pb2, teacher_pb2

from .conftest import make_settings

TOKENS = {"alice": "tm_roles_alice", "audit": "tm_roles_audit", "root": "tm_roles_root"}
ROLES = {"audit": "compliance", "root": "admin"}
FORENSICS = "/tracemark.v1.ForensicsService/"


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("roles")
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    # the default message limit (1 MiB), so a 100k-character report id reaches the servicer
    settings = make_settings(
        tmp, server={"max_message_bytes": 1 << 20}, forensics={"model_roots": [tiny_model_dir]}
    )
    store = TokenStore({a: hash_token(t) for a, t in TOKENS.items()}, roles=ROLES)
    server = TracemarkServer(settings, teacher=teacher, tokens=store)
    server.start()
    assert server.wait_ready(60), server.runtime.load_error
    issuer = server.runtime.issuer  # a delivered pair makes the account accusable (else nothing to test)
    for pair in issuer.pairs_for("alice"):
        issuer.record_issue(account="alice", trace_id=f"t-{pair.index}", pair=pair, rewriter="watermark")
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def clients(server):
    stubs = {a: Stubs(open_channel(f"127.0.0.1:{server.port}", token=t)) for a, t in TOKENS.items()}
    yield stubs
    for s in stubs.values():
        s.close()


@pytest.fixture(scope="module")
def report_id(clients, tiny_model_dir):
    """One real investigation, run by the compliance token."""
    request = forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}", mode="white-box")
    events = list(clients["audit"].forensics.Investigate(request, timeout=300))
    assert events[-1].HasField("result")
    return events[-1].result.report_id


def _counts(server) -> dict[str, int]:
    with server.runtime.engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("investigation", "query_record", "report")
        }


def test_customer_gets_permission_denied_and_the_server_does_no_work(
    server, clients, report_id, tiny_model_dir
):
    alice = clients["alice"].forensics
    before = _counts(server)
    assert before["report"] >= 1
    calls = {
        "Investigate": lambda: list(
            alice.Investigate(forensics_pb2.InvestigateRequest(suspect=f"hf:{tiny_model_dir}"), timeout=30)
        ),
        "GetReport": lambda: alice.GetReport(forensics_pb2.GetReportRequest(report_id=report_id), timeout=10),
        "VerifyReport": lambda: alice.VerifyReport(
            forensics_pb2.VerifyReportRequest(report_id=report_id), timeout=10
        ),
    }
    for name, call in calls.items():
        error = _rpc_error(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert error.details() == "ForensicsService requires the compliance role", name
    assert _counts(server) == before  # no investigation row, no query, no report appended
    # the customer's own services still work
    info = clients["alice"].teacher.GetTeacherInfo(teacher_pb2.GetTeacherInfoRequest(), timeout=10)
    assert info.model_id == "tiny-random-llama"


def test_role_is_checked_before_the_request_is_parsed(server):
    """Undecodable bytes from a customer get PERMISSION_DENIED (not INTERNAL): the request is never read."""
    for token, expected in [
        (TOKENS["alice"], grpc.StatusCode.PERMISSION_DENIED),
        ("tm_wrong", grpc.StatusCode.UNAUTHENTICATED),
    ]:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        raw = channel.unary_unary(FORENSICS + "GetReport")
        metadata = (("authorization", f"Bearer {token}"),)
        assert _code(lambda raw=raw, m=metadata: raw(b"\xff\xff\xff", timeout=10, metadata=m)) == expected
        channel.close()


def test_compliance_reads_reports_by_full_id_only(clients, report_id):
    audit = clients["audit"].forensics
    stored = audit.GetReport(forensics_pb2.GetReportRequest(report_id=report_id), timeout=10)
    assert stored.report_id == report_id and json.loads(stored.envelope_json)
    check = audit.VerifyReport(forensics_pb2.VerifyReportRequest(report_id=report_id), timeout=10)
    assert check.valid
    for partial in (report_id[:10], report_id[:-1], "latest"):
        for call in (
            lambda p=partial: audit.GetReport(forensics_pb2.GetReportRequest(report_id=p), timeout=10),
            lambda p=partial: audit.VerifyReport(forensics_pb2.VerifyReportRequest(report_id=p), timeout=10),
        ):
            assert _code(call) == grpc.StatusCode.NOT_FOUND, partial
    huge = "tmr-" + "a" * 100_000
    for call in (
        lambda: audit.GetReport(forensics_pb2.GetReportRequest(report_id=huge), timeout=10),
        lambda: audit.VerifyReport(forensics_pb2.VerifyReportRequest(report_id=huge), timeout=10),
    ):
        assert _code(call) == grpc.StatusCode.INVALID_ARGUMENT
    for envelope in ("[" * 5000 + "]" * 5000, "[1, 2]", "{"):
        request = forensics_pb2.VerifyReportRequest(envelope_json=envelope)
        assert _code(lambda r=request: audit.VerifyReport(r, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("account", ["audit", "root"])
def test_compliance_and_admin_cannot_call_customer_services(clients, account):
    teacher = clients[account].teacher
    error = _rpc_error(lambda: teacher.GetTeacherInfo(teacher_pb2.GetTeacherInfoRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "TeacherService requires the customer role"


def test_admin_cannot_investigate_or_read_reports(clients, report_id):
    forensics = clients["root"].forensics
    request = forensics_pb2.GetReportRequest(report_id=report_id)
    assert _code(lambda: forensics.GetReport(request, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED


def test_anonymous_callers_are_customers(tmp_path, tiny_model_dir):
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    settings = make_settings(tmp_path, auth={"allow_anonymous": True})
    server = TracemarkServer(settings, teacher=teacher, tokens=TokenStore())
    port = server.start()
    stubs = Stubs(open_channel(f"127.0.0.1:{port}"))
    try:
        assert server.wait_ready(60)
        assert stubs.teacher.GetTeacherInfo(teacher_pb2.GetTeacherInfoRequest(), timeout=10).model_id
        request = forensics_pb2.GetReportRequest(report_id="latest")
        assert (
            _code(lambda: stubs.forensics.GetReport(request, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        )
    finally:
        stubs.close()
        server.stop(grace=1)
