"""AccountService.GetKeyReceipt over real gRPC: the caller's own receipt, verifiable offline; NOT_FOUND
before the account's first signed trace; UNAUTHENTICATED without a token (even with anonymous callers
allowed); every role may call it, about its own account only."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tracemark.forensics import tlog
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import ANY_ROLE, TokenStore, hash_token, required_role
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher
from tracemark.v1 import account_pb2

TOKENS = {
    "alice": "tm_acc_alice_tok",
    "bob": "tm_acc_bob_tok",
    "audit": "tm_acc_audit_tok",
    "root": "tm_acc_root",
}
ROLES = {"audit": "compliance", "root": "admin"}
REQUEST = account_pb2.GetKeyReceiptRequest()


def _server(tmp, tiny_model_dir, *, allow_anonymous: bool) -> TracemarkServer:
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0", "max_problem_chars": 500, "max_message_bytes": 64 * 1024},
            "teacher": {"backend": "tiny", "max_new_tokens": 8, "max_batch_size": 4, "batch_window_ms": 20},
            "rewrite": {"default_pipeline": ["identity"], "mandatory": [], "timeout_s": 5},
            "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}", "master_key_file": tmp / "master.key"},
            "auth": {"allow_anonymous": allow_anonymous},
        }
    )
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    tokens = TokenStore({a: hash_token(t) for a, t in TOKENS.items()}, roles=ROLES)
    server = TracemarkServer(settings, teacher=teacher, tokens=tokens)
    server.start()
    assert server.wait_ready(60), server.runtime.load_error
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    srv = _server(tmp_path_factory.mktemp("account"), tiny_model_dir, allow_anonymous=False)
    yield srv
    srv.stop(grace=1)


def _stubs(server, account: str | None) -> Stubs:
    token = TOKENS[account] if account else None
    return Stubs(open_channel(f"127.0.0.1:{server.port}", token=token))


def _call(server, account: str | None, token: str | None = None):
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=token)) if token else _stubs(server, account)
    try:
        return stubs.account.GetKeyReceipt(REQUEST, timeout=10)
    finally:
        stubs.close()


def _code(server, account: str | None, token: str | None = None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        _call(server, account, token)
    return info.value.code(), info.value.details()


def _issue(server, account: str) -> None:
    issuer = server.runtime.issuer
    issuer.record_issue(
        account=account, trace_id=f"trace-{account}", pair=issuer.pairs_for(account)[0], rewriter="w"
    )


def test_role_table_lists_the_service():
    assert required_role("/tracemark.v1.AccountService/GetKeyReceipt") == ANY_ROLE


def test_receipt_is_the_callers_own_and_verifies_offline(server):
    code, details = _code(server, "alice")
    assert code == grpc.StatusCode.NOT_FOUND and "alice" in details and "no key commitment" in details
    _issue(server, "alice")
    _issue(server, "bob")
    receipt_json = _call(server, "alice").receipt_json
    receipt = json.loads(receipt_json)
    assert receipt["format"] == tlog.RECEIPT_FORMAT and receipt["account"] == "alice"
    assert [e["subject"] for e in receipt["proof"]["entries"]] == ["account-key:alice:1"]
    master = server.runtime.master
    assert master.account_key("alice", version=1).hex() not in receipt_json
    assert "bob" not in receipt_json  # another account's entry appears by its leaf hash only
    result = tlog.verify_receipt(receipt, master.signing_public_key_pem())
    assert result.valid, result.problems
    body = receipt["proof"]["entries"][0]["body"]
    assert tlog.open_key_commitment(body, master.account_key("alice", version=1))
    assert body["scheme"] == server.runtime.issuer.scheme_dict()
    bob = json.loads(_call(server, "bob").receipt_json)
    assert bob["account"] == "bob" and [e["subject"] for e in bob["proof"]["entries"]] == [
        "account-key:bob:1"
    ]
    assert tlog.verify_receipt(bob, master.signing_public_key_pem()).valid


@pytest.mark.parametrize("account", ["audit", "root"])
def test_every_role_may_ask_about_its_own_account(server, account):
    code, details = _code(server, account)  # compliance and admin accounts receive no traces: no commitment
    assert code == grpc.StatusCode.NOT_FOUND and account in details


def test_no_or_unknown_token_is_unauthenticated(server):
    assert _code(server, None)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert _code(server, None, token="tm_not_a_token")[0] == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_name_the_service(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service="tracemark.v1.AccountService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "tracemark.v1.AccountService" in services
    finally:
        channel.close()


def test_anonymous_callers_get_no_receipt(tmp_path, tiny_model_dir):
    srv = _server(tmp_path, tiny_model_dir, allow_anonymous=True)
    try:
        code, details = _code(srv, None)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
    finally:
        srv.stop(grace=1)
