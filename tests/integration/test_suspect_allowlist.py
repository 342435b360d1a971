"""Suspects the server may call (issue 11): only ``[forensics]`` allowlisted endpoints and model roots, refused
with PERMISSION_DENIED before any connection; link-local / metadata addresses refused even when allowlisted;
redirects not followed; the configured credential is sent, never the server's own; local path errors reveal
nothing about what exists outside the roots."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.adapters.policy import (
    LOCAL_NOT_ALLOWED,
    NOT_ALLOWED,
    SuspectNotAllowed,
    SuspectPolicy,
    normalize_endpoint,
)
from tracemark.foundation.errors import PermissionDenied
from tracemark.server.app import TracemarkServer
from tracemark.server.client import Stubs, open_channel
from tracemark.server.teacher.local import LocalTeacher
from tracemark.v1 import forensics_pb2

from .conftest import TOKENS, make_settings, token_store

SECRETS = {"TRACEMARK_TOKEN": "tm_server_own_token", "TRACEMARK_SUSPECT_API_KEY": "sk_cli_generic_key"}
SUSPECT_KEY = "sk_configured_for_this_suspect"


class FakeSuspect(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint that records every request; ``redirect_to`` answers 307 instead."""

    daemon_threads = True

    def __init__(self, redirect_to: str | None = None) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.redirect_to = redirect_to
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self.server.requests.append((self.path, dict(self.headers)))
        if self.server.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.server.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps({"choices": [{"text": " 1234"}] * int(body.get("n", 1))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def listener():
    """A bound, listening socket nobody allowlisted: it must never see a connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(1.0)
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        conn, _ = sock.accept()
        conn.close()


@pytest.fixture(scope="module")
def fakes():
    fake, redirect_target = FakeSuspect(), socket.socket()
    redirect_target.bind(("127.0.0.1", 0))
    redirect_target.listen(8)
    redirect_target.settimeout(1.0)
    redirecting = FakeSuspect(redirect_to=f"http://127.0.0.1:{redirect_target.getsockname()[1]}")
    yield fake, redirecting, redirect_target
    for server in (fake, redirecting):
        server.shutdown()
        server.server_close()
    redirect_target.close()


@pytest.fixture(scope="module")
def roots(tmp_path_factory, tiny_model_dir):
    """``allowed/`` (the one model root) holds a model copy and a symlink to a model outside the root."""
    base = tmp_path_factory.mktemp("suspects")
    allowed = base / "allowed"
    shutil.copytree(tiny_model_dir, allowed / "model")
    (allowed / "link").symlink_to(tiny_model_dir)
    return allowed


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, fakes, roots):
    fake, redirecting, _ = fakes
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    forensics = {
        "endpoints": [fake.base_url, redirecting.base_url, "http://169.254.169.254/v1"],
        "credentials": {fake.base_url: "SUSPECT_FAKE_KEY"},
        "model_roots": [roots],
    }
    settings = make_settings(tmp_path_factory.mktemp("allowlist"), forensics=forensics)
    server = TracemarkServer(settings, teacher=teacher, tokens=token_store())
    server.start()
    assert server.wait_ready(60), server.runtime.load_error
    issuer = server.runtime.issuer  # one delivered pair makes an account accusable (else nothing to test)
    for pair in issuer.pairs_for("customer-x"):
        issuer.record_issue(account="customer-x", trace_id=f"t-{pair.index}", pair=pair, rewriter="watermark")
    yield server
    server.stop(grace=1)


@pytest.fixture
def audit(server, monkeypatch):
    for name, value in {**SECRETS, "SUSPECT_FAKE_KEY": SUSPECT_KEY}.items():
        monkeypatch.setenv(name, value)
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKENS["audit"]))
    yield stubs.forensics
    stubs.close()


def _investigate(forensics, suspect: str, **fields):
    request = forensics_pb2.InvestigateRequest(suspect=suspect, **fields)
    return list(forensics.Investigate(request, timeout=120))


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_a_suspect_outside_the_allowlist_is_refused_before_any_connection(audit, listener):
    port = listener.getsockname()[1]
    for suspect in (
        f"openai:http://127.0.0.1:{port}/v1#m",
        f"openai:http://localhost:{port}#m",
        f"tracemark:127.0.0.1:{port}",
    ):
        error = _error(lambda s=suspect: _investigate(audit, s))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, suspect
        assert NOT_ALLOWED in error.details()
    assert_no_connection(listener)


def test_metadata_addresses_are_refused_even_when_allowlisted(audit):
    for suspect in ("openai:http://169.254.169.254/v1#m", "openai:http://169.254.169.254/latest/meta-data#m"):
        error = _error(lambda s=suspect: _investigate(audit, s))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, suspect


def test_an_allowlisted_endpoint_is_contacted_with_its_own_credential_only(audit, fakes):
    fake = fakes[0]
    fake.requests.clear()
    events = _investigate(audit, f"openai:{fake.base_url}#suspect-model", mode="black-box", query_budget=8)
    assert events[-1].HasField("result")
    assert fake.requests, "the allowlisted suspect was never contacted"
    for path, headers in fake.requests:
        assert path.startswith("/v1/")
        assert headers.get("Authorization") == f"Bearer {SUSPECT_KEY}"
        assert not any(secret in str(headers) for secret in SECRETS.values())


def test_redirects_are_not_followed(audit, fakes):
    _, redirecting, target = fakes
    redirecting.requests.clear()
    events = _investigate(audit, f"openai:{redirecting.base_url}#m", mode="black-box", query_budget=8)
    result = events[-1].result
    assert redirecting.requests  # the allowlisted endpoint was asked ...
    assert result.verdict == forensics_pb2.VERDICT_INCONCLUSIVE and "redirect" in result.detail
    assert_no_connection(target)  # ... and its redirect was not followed


def test_local_path_errors_reveal_nothing_about_what_exists(audit, roots, tiny_model_dir):
    refused = [
        f"hf:{tiny_model_dir}",  # a real model outside the roots
        "hf:/nonexistent/model",  # missing, outside
        f"hf:{roots / 'missing'}",  # missing, inside
        f"hf:{roots / 'link'}",  # a symlink inside the roots to a model outside them
        f"hf:{roots / 'model' / '..' / '..'}",  # traversal out of the root
        "hf:/etc",  # exists, not a model
        "hf:~/.ssh",
        "gguf:/etc/passwd.gguf",
        f"gguf:{tiny_model_dir / 'config.json'}",
    ]
    details = set()
    for suspect in refused:
        error = _error(lambda s=suspect: _investigate(audit, s))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, suspect
        details.add(error.details())
    assert details == {LOCAL_NOT_ALLOWED}


# --- the policy itself (no server) --------------------------------------------------------------------------


def _policy(endpoint: str, answers: dict[str, list[list[str]]]) -> SuspectPolicy:
    """A policy allowing ``endpoint`` whose resolver gives each host its answers in turn (the last repeats)."""
    calls: dict[str, int] = {}

    def resolver(host: str, port: int) -> list[str]:
        i = calls.get(host, 0)
        calls[host] = i + 1
        return answers[host][min(i, len(answers[host]) - 1)]

    return SuspectPolicy.build([endpoint], resolver=resolver)


@pytest.mark.parametrize(
    "addresses, reason",
    [
        (["169.254.169.254"], "cloud metadata"),
        (["10.0.0.7", "fe80::1"], "link-local"),  # any one bad address refuses the host
        (["169.254.10.1"], "link-local"),
        (["::ffff:169.254.169.254"], "cloud metadata"),
        (["fd00:ec2::254"], "cloud metadata"),
        (["127.0.0.1"], "loopback"),  # a DNS name the suspect controls pointing at the server itself
        (["0.0.0.0"], "unspecified"),
    ],
)
def test_dns_names_resolving_to_forbidden_addresses_are_refused(addresses, reason):
    policy = _policy("https://suspect.example/v1", {"suspect.example": [addresses]})
    with pytest.raises(SuspectNotAllowed, match=reason):
        parse_suspect("openai:https://suspect.example/v1#m", policy=policy)


def test_dns_rebinding_after_the_check_is_caught_at_connect_time(listener):
    """The name first resolves to an ordinary address, then (at connect time) to link-local: refused, and
    the connection goes nowhere."""
    policy = _policy("http://suspect.example/v1", {"suspect.example": [["10.9.9.9"], ["169.254.169.254"]]})
    suspect = parse_suspect("openai:http://suspect.example#m", policy=policy, max_retries=0)
    with pytest.raises(PermissionDenied, match="metadata"):
        suspect.sample("x1 =", n=1)


def test_connections_go_to_the_checked_address(fakes):
    """``localhost`` resolved by the policy (here: to 127.0.0.1) is where the request goes."""
    fake = fakes[0]
    port = fake.server_address[1]
    policy = _policy(f"http://localhost:{port}/v1", {"localhost": [["127.0.0.1"]]})
    fake.requests.clear()
    suspect = parse_suspect(f"openai:http://localhost:{port}#m", policy=policy, max_retries=0)
    assert suspect.sample("x1 =", n=2)[0].text == " 1234"
    assert fake.requests and fake.requests[0][1]["Host"] == f"localhost:{port}"
    assert "Authorization" not in fake.requests[0][1]  # no credential configured: none sent


@pytest.mark.parametrize(
    "given, allowed",
    [
        ("http://127.0.0.1:80/v1/", True),
        ("http://127.0.0.1", True),
        ("HTTP://127.0.0.1/v1", True),
        ("http://127.0.0.1:81/v1", False),
        ("https://127.0.0.1/v1", False),
        ("http://127.0.0.1/other/v1", False),
    ],
)
def test_endpoints_match_exactly_after_normalisation(given, allowed):
    assert (normalize_endpoint(given) == normalize_endpoint("http://127.0.0.1/v1")) is allowed


@pytest.mark.parametrize(
    "bad", ["http://allowed.example@evil.example/v1", "http://a/v1?x=1", "ftp://a/v1", "tracemark://a"]
)
def test_endpoints_with_user_info_queries_or_other_schemes_are_rejected(bad):
    with pytest.raises(ValueError):
        normalize_endpoint(bad)
