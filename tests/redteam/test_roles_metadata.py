"""Red team (issue 11): role checks against method-name tricks, odd/duplicate ``authorization`` metadata,
streaming RPCs, anonymous mode on and off, and compliance/admin tokens on customer RPCs, over real gRPC with
raw (undecoded) request bytes so that the check must happen before decoding."""

from __future__ import annotations

import grpc
import pytest
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher

TOKENS = {"alice": "tm_rt_alice_tok", "audit": "tm_rt_audit_tok", "root": "tm_rt_root_tok"}
ROLES = {"audit": "compliance", "root": "admin"}
FORENSICS = [
    ("/tracemark.v1.ForensicsService/Investigate", "stream"),
    ("/tracemark.v1.ForensicsService/GetReport", "unary"),
    ("/tracemark.v1.ForensicsService/VerifyReport", "unary"),
]
CUSTOMER = [
    ("/tracemark.v1.TeacherService/Generate", "unary"),
    ("/tracemark.v1.TeacherService/GenerateStream", "stream"),
    ("/tracemark.v1.TeacherService/GetTeacherInfo", "unary"),
    ("/tracemark.v1.RewriteService/Rewrite", "unary"),
    ("/tracemark.v1.RewriteService/ListRewriters", "unary"),
]
GARBAGE = b"\xff\xff\xff\xff\x0f"  # not a valid protobuf message: decoding it would give INVALID_ARGUMENT


@pytest.fixture(scope="module", params=[False, True], ids=["anon-off", "anon-on"])
def server(request, tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("rt_roles")
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0", "max_problem_chars": 500, "max_message_bytes": 64 * 1024},
            "teacher": {"backend": "tiny", "max_new_tokens": 8, "max_batch_size": 4, "batch_window_ms": 20},
            "rewrite": {"default_pipeline": ["identity"], "mandatory": [], "timeout_s": 5},
            "ledger": {"url": f"sqlite:///{tmp / 'l.db'}", "master_key_file": tmp / "master.key"},
            "auth": {"allow_anonymous": request.param},
        }
    )
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    tokens = TokenStore({a: hash_token(t) for a, t in TOKENS.items()}, roles=ROLES)
    srv = TracemarkServer(settings, teacher=teacher, tokens=tokens)
    srv.start()
    assert srv.wait_ready(60), srv.runtime.load_error
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield channel, request.param
    channel.close()
    srv.stop(grace=1)


def _code(channel, method, kind, metadata, payload=GARBAGE):
    try:
        if kind == "stream":
            list(channel.unary_stream(method)(payload, metadata=metadata, timeout=5))
        else:
            channel.unary_unary(method)(payload, metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _bearer(account):
    return [("authorization", f"Bearer {TOKENS[account]}")]


def test_customer_is_denied_every_forensics_rpc_before_decoding(server):
    channel, _ = server
    for method, kind in FORENSICS:
        code, details = _code(channel, method, kind, _bearer("alice"))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code, details)
        assert TOKENS["alice"] not in details and "alice" not in details


def test_compliance_and_admin_are_denied_customer_rpcs(server):
    channel, _ = server
    for account in ("audit", "root"):
        for method, kind in CUSTOMER:
            code, _ = _code(channel, method, kind, _bearer(account))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (account, method, code)
    for method, kind in FORENSICS:
        assert _code(channel, method, kind, _bearer("root"))[0] == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "method",
    [
        "/tracemark.v1.ForensicsService/getreport",
        "/tracemark.v1.forensicsservice/GetReport",
        "/tracemark.v1.ForensicsService/GetReport/",
        "//tracemark.v1.ForensicsService/GetReport",
        "/tracemark.v1.ForensicsService//GetReport",
        "/tracemark.v1.ForensicsService/GetReport%00",
        "/TRACEMARK.V1.FORENSICSSERVICE/GETREPORT",
        "/tracemark.v1.ForensicsService/Nope",
        "/tracemark.v1.AdminService/AddAccount",
        "/grpc.health.v1.Health/../../tracemark.v1.ForensicsService/GetReport",
        "/grpc.reflection.v1alpha.ServerReflection/../../tracemark.v1.ForensicsService/GetReport",
        "/grpc.health.v1.Health/GetReport",
    ],
)
def test_method_name_tricks_never_reach_a_forensics_handler(server, method):
    channel, _ = server
    for metadata in (_bearer("alice"), []):
        code, _ = _code(channel, method, "unary", metadata)
        assert code in (
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        ), (method, code)


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Bearer tm_rt_alice_tok"), ("authorization", "Bearer tm_rt_audit_tok")],
        [("authorization", "Bearer tm_rt_alice_tok, Bearer tm_rt_audit_tok")],
        [("authorization", "Bearer tm_rt_alice_tok"), ("x-authorization", "Bearer tm_rt_audit_tok")],
        [("authorization", "Basic tm_rt_audit_tok")],
        [("authorization", "tm_rt_audit_tok")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer ")],
        [("authorization", "")],
        [("x-api-key", "tm_rt_audit_tok")],
        [("authorization-bin", b"Bearer tm_rt_audit_tok")],
        [("authorization", "Bearer " + hash_token("tm_rt_audit_tok"))],  # the stored hash is not a token
        [("authorization", "Bearer tm_rt_audit_to")],
        [("authorization", "Bearer TM_RT_AUDIT_TOK")],
    ],
)
def test_odd_authorization_metadata_never_grants_compliance(server, metadata):
    channel, _ = server
    try:
        code, details = _code(channel, "/tracemark.v1.ForensicsService/GetReport", "unary", metadata)
    except ValueError:  # the client library itself refuses the metadata
        return
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (metadata, code)
    assert "tm_rt_" not in details


def test_anonymous_callers_are_customers_or_unauthenticated(server):
    channel, anonymous = server
    for method, kind in FORENSICS:
        code, _ = _code(channel, method, kind, [])
        want = grpc.StatusCode.PERMISSION_DENIED if anonymous else grpc.StatusCode.UNAUTHENTICATED
        assert code == want, (method, code)
    code, _ = _code(channel, "/tracemark.v1.TeacherService/GetTeacherInfo", "unary", [], payload=b"")
    assert code == (grpc.StatusCode.OK if anonymous else grpc.StatusCode.UNAUTHENTICATED)


def test_compliance_token_variants_that_are_accepted_still_only_reach_forensics(server):
    """``bearer`` lower-case and extra spaces are accepted (not a privilege change); garbage bytes then reach
    the decoder and give INVALID_ARGUMENT, never INTERNAL/UNKNOWN."""
    channel, _ = server
    for value in ("bearer tm_rt_audit_tok", "Bearer    tm_rt_audit_tok   ", "BEARER tm_rt_audit_tok"):
        code, details = _code(channel, "/tracemark.v1.ForensicsService/GetReport", "unary", [("authorization", value)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (value, code, details)
        code, _ = _code(channel, "/tracemark.v1.TeacherService/Generate", "unary", [("authorization", value)])
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_are_public_but_harmless(server):
    channel, _ = server
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # a forensics service name in the health request does not invoke it
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="tracemark.v1.ForensicsService"), timeout=5
    )
    assert reply.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
