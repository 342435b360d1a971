"""Red team (issue 11): suspect-allowlist bypasses, first at the policy (fast, no server), then over gRPC as a
compliance caller against a real server whose ``[forensics]`` allowlists one loopback endpoint we control.
Each attack aims at a listener nobody allowlisted (it must see no connection) or at a metadata address."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.adapters.base import SuspectSpecError
from tracemark.forensics.adapters.policy import LOCAL_NOT_ALLOWED, SuspectNotAllowed, SuspectPolicy
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher
from tracemark.v1 import forensics_pb2

ALLOWED_PORT = 18080
OTHER_PORT = 18081
ALLOWED = f"http://127.0.0.1:{ALLOWED_PORT}/v1"


def _policy(resolver=None, **kw) -> SuspectPolicy:
    extra = {"resolver": resolver} if resolver else {}
    return SuspectPolicy.build(
        [ALLOWED, "http://suspect.example/v1", "tracemark://127.0.0.1:50051"], **kw, **extra
    )


BYPASS_SPECS = [
    f"openai:http://2130706433:{ALLOWED_PORT}/v1#m",  # decimal IPv4
    f"openai:http://0x7f.1:{ALLOWED_PORT}/v1#m",  # hex/short IPv4
    f"openai:http://0177.0.0.1:{ALLOWED_PORT}/v1#m",  # octal
    f"openai:http://127.1:{ALLOWED_PORT}/v1#m",
    f"openai:http://[::ffff:127.0.0.1]:{ALLOWED_PORT}/v1#m",
    f"openai:http://[::ffff:7f00:1]:{ALLOWED_PORT}/v1#m",
    "openai:http://[::ffff:169.254.169.254]/v1#m",
    "openai:http://[::ffff:a9fe:a9fe]/v1#m",
    f"openai:http://127.0.0.1:{ALLOWED_PORT}@127.0.0.1:{OTHER_PORT}/v1#m",  # user-info
    f"openai:http://127.0.0.1:{ALLOWED_PORT}\\@127.0.0.1:{OTHER_PORT}/v1#m",
    f"openai:http://127.0.0.1.:{ALLOWED_PORT}/v1#m",  # trailing dot
    f"openai:http://127.0.0.1:{OTHER_PORT}/v1#m",  # same host, other port
    f"openai:https://127.0.0.1:{ALLOWED_PORT}/v1#m",  # other scheme
    "openai:http://127.0.0.1/v1#m",  # default port instead of the explicit one
    f"openai:http://127.0.0.1:{ALLOWED_PORT}/v1/../admin#m",
    f"openai:http://127.0.0.1:{ALLOWED_PORT}/x/../v1#m",
    f"openai:http://127.0.0.1:{ALLOWED_PORT}/%2e%2e/v1#m",
    f"openai:http://127.0.0.1:{ALLOWED_PORT}/v1%2f..%2fadmin#m",
    f"openai:http://127.0.0.1:{ALLOWED_PORT}/v1?x=1#m",
    f"openai:http://127.0.0.1:{ALLOWED_PORT}/v1;x#m",
    f"openai:http://localhost:{ALLOWED_PORT}/v1#m",  # a name for the allowlisted literal
    f"openai:http://localhost.:{ALLOWED_PORT}/v1#m",
    f"openai:http://LOCALHOST:{ALLOWED_PORT}/v1#m",
    f"openai:http://１２７.０.０.１:{ALLOWED_PORT}/v1#m",  # fullwidth digits
    f"openai:http://127.0.0.1:{ALLOWED_PORT}%0d%0aHost:evil/v1#m",
    "openai:http://suspect.example.:80/v1#m",
    "openai:http://suspect.example:8080/v1#m",
    "openai:http://evil.suspect.example/v1#m",
    "openai:http://suspect.example.evil/v1#m",
    "tracemark:127.0.0.1:50052",
    "tracemark:localhost:50051",
    "tracemark:2130706433:50051",
    "tracemark:[::ffff:127.0.0.1]:50051",
    "tracemark:127.0.0.1:050051",
    "TRACEMARK:169.254.169.254:50051",
    "OpenAI:http://169.254.169.254/v1#m",
]


@pytest.mark.parametrize("spec", BYPASS_SPECS)
def test_policy_refuses_normalisation_bypasses(spec):
    """Every variant is either malformed (INVALID_ARGUMENT) or not allowlisted (PERMISSION_DENIED), and no
    adapter (which could connect) is built."""
    policy = _policy(resolver=lambda host, port: ["93.184.216.34"])  # suspect.example: an ordinary address
    with pytest.raises((SuspectNotAllowed, SuspectSpecError)):
        parse_suspect(spec, policy=policy)


def test_a_hash_before_the_host_only_changes_the_model_name():
    """``#`` splits URL from model at its first occurrence: the rest is a model name sent in the JSON body,
    and the adapter still talks to the allowlisted endpoint only."""
    spec = f"openai:http://127.0.0.1:{ALLOWED_PORT}#@127.0.0.1:{OTHER_PORT}/v1#m"
    adapter = parse_suspect(spec, policy=_policy())
    try:
        assert adapter.base_url == ALLOWED and str(adapter._client.base_url).rstrip("/") == ALLOWED
    finally:
        adapter.close()


@pytest.mark.parametrize(
    "answer",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_a_suspect_controlled_dns_name_cannot_point_at_loopback_or_metadata(answer):
    """The allowlisted host is the suspect's own; its DNS answers whatever it likes (and may add a good one)."""
    policy = _policy(resolver=lambda host, port: ["93.184.216.34", answer])
    with pytest.raises(SuspectNotAllowed):
        policy.check_endpoint("http://suspect.example:80/v1")
    with pytest.raises(SuspectNotAllowed):  # the connect-time re-check (rebinding) refuses it too
        policy.checked_address("suspect.example", 80)


@pytest.mark.parametrize(
    "answer",
    ["2002:a9fe:a9fe::1", "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:5601:5601", "fec0::1"],
)
def test_transition_addresses_embedding_metadata_or_loopback_are_refused(answer):
    policy = _policy(resolver=lambda host, port: [answer])
    with pytest.raises(SuspectNotAllowed):
        policy.checked_address("suspect.example", 80)


def test_local_paths_symlinks_and_traversal(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text("{}")
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "m.gguf").write_bytes(b"GGUF")
    (root / "link").symlink_to(outside)  # a symlink inside the root to a model outside
    (root / "file.gguf").symlink_to(outside / "m.gguf")
    (root / "model" / "up").symlink_to("../..")  # a relative symlink climbing out
    (root / "loop").symlink_to(root / "loop")
    policy = SuspectPolicy.build(model_roots=[root])
    refused = [
        ("hf", str(root / "link")),
        ("hf", str(root / "model" / "up" / "outside")),
        ("hf", f"{root}/model/../../outside"),
        ("hf", f"{root}/%2e%2e/outside"),
        ("hf", f"{root}/../outside"),
        ("hf", f"{root}x/../outside"),  # prefix confusion: /root vs /rootx
        ("hf", str(root / "loop")),
        ("hf", str(root / "missing")),
        ("hf", "/etc"),
        ("hf", "~"),
        ("hf", f"{root}/model\x00"),
        ("hf", "x" * 5000),
        ("gguf", str(root / "file.gguf")),
        ("gguf", str(outside / "m.gguf")),
        ("gguf", f"{root}/../outside/m.gguf"),
    ]
    for kind, path in refused:
        with pytest.raises(SuspectNotAllowed) as info:
            policy.local_model(kind, path)
        assert str(info.value) == LOCAL_NOT_ALLOWED, (kind, path)
    assert policy.local_model("hf", f"{root}/model/../model") == root / "model"  # inside stays allowed
    # a root that is itself a prefix string of a sibling is not a prefix match
    (tmp_path / "rootx" / "m").mkdir(parents=True)
    (tmp_path / "rootx" / "m" / "config.json").write_text("{}")
    with pytest.raises(SuspectNotAllowed):
        policy.local_model("hf", str(tmp_path / "rootx" / "m"))


# --- over gRPC, against a real server ------------------------------------------------------------------
TOKENS = {"alice": "tm_rt_alice", "audit": "tm_rt_audit"}


class _Fake(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.hits = 0
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.server.hits += 1
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        payload = json.dumps({"choices": [{"text": " 1234"}] * int(body.get("n", 1))}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("rt_allow")
    fake = _Fake()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.5)
    allowed = f"http://127.0.0.1:{fake.server_address[1]}/v1"
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0", "max_problem_chars": 500, "max_message_bytes": 64 * 1024},
            "teacher": {"backend": "tiny", "max_new_tokens": 8, "max_batch_size": 4, "batch_window_ms": 20},
            "rewrite": {"default_pipeline": ["identity"], "mandatory": [], "timeout_s": 5},
            "ledger": {"url": f"sqlite:///{tmp / 'l.db'}", "master_key_file": tmp / "master.key"},
            "forensics": {"endpoints": [allowed], "model_roots": [str(tmp / "root")]},
        }
    )
    (tmp / "root").mkdir()
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    tokens = TokenStore({a: hash_token(t) for a, t in TOKENS.items()}, roles={"audit": "compliance"})
    server = TracemarkServer(settings, teacher=teacher, tokens=tokens)
    server.start()
    assert server.wait_ready(60), server.runtime.load_error
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKENS["audit"]))
    yield stubs.forensics, fake, listener, tmp
    stubs.close()
    server.stop(grace=1)
    fake.shutdown()
    fake.server_close()
    listener.close()


def _grpc_variants(fake_port: int, other: int) -> list[str]:
    return [
        f"openai:http://2130706433:{other}/v1#m",
        f"openai:http://[::ffff:127.0.0.1]:{other}/v1#m",
        f"openai:http://127.0.0.1:{fake_port}@127.0.0.1:{other}/v1#m",
        f"openai:http://127.0.0.1:{other}/v1#m",
        f"openai:http://localhost:{other}/v1#m",
        f"openai:http://localhost.:{fake_port}/v1#m",
        f"openai:http://127.0.0.1.:{fake_port}/v1#m",
        f"openai:http://127.0.0.1:{fake_port}/v1/../../x#m",
        f"openai:http://127.0.0.1:{fake_port}/%2e%2e/v1#m",
        "openai:http://[::ffff:169.254.169.254]/v1#m",
        "openai:http://0xa9fea9fe/v1#m",
        f"tracemark:127.0.0.1:{other}",
        f"tracemark:localhost:{other}",
    ]


def test_grpc_bypass_variants_are_refused_before_any_connection(served):
    forensics, fake, listener, _ = served
    other = listener.getsockname()[1]
    before = fake.hits
    for spec in _grpc_variants(fake.server_address[1], other):
        with pytest.raises(grpc.RpcError) as info:
            list(forensics.Investigate(forensics_pb2.InvestigateRequest(suspect=spec), timeout=10))
        code = info.value.code()
        assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT), (spec, code)
        assert "Traceback" not in info.value.details() and "/" not in info.value.details().split(":", 1)[0]
    with pytest.raises(TimeoutError):
        listener.accept()[0].close()
    assert fake.hits == before  # none of the variants reached the allowlisted fake either


def test_grpc_local_path_errors_are_identical_for_missing_and_forbidden(served, tiny_model_dir):
    forensics, _, _, tmp = served
    (tmp / "root" / "escape").symlink_to(tiny_model_dir)
    details = set()
    for path in [
        str(tiny_model_dir),
        "/nonexistent",
        str(tmp / "root" / "escape"),
        str(tmp / "root" / "nope"),
        f"{tmp}/root/../root/escape",
        os.path.expanduser("~"),
        "/etc",
        "/proc/self/cwd",
    ]:
        for kind in ("hf", "gguf"):
            with pytest.raises(grpc.RpcError) as info:
                list(
                    forensics.Investigate(
                        forensics_pb2.InvestigateRequest(suspect=f"{kind}:{path}"), timeout=10
                    )
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (kind, path)
            details.add(info.value.details())
    assert len(details) == 1, details
    assert str(tmp) not in next(iter(details))


ODD_IDS = [
    "latest",
    "a",
    "abcdef",
    "../../etc/passwd",
    "/etc/passwd",
    "%",
    "_",
    "*",
    "' OR 1=1 --",
    "0" * 64,
    "0" * 65,
    "x" * 60_000,
    "\u0000",
    "é" * 40,
    "latest\n",
]
ODD_ENVELOPES = [
    "{",
    "[]",
    "null",
    '{"payload": "!!", "payloadType": "x", "signatures": []}',
    '{"payload": "e30=", "payloadType": "application/vnd.tracemark.report+json", '
    '"signatures": [{"keyid": "../../x", "sig": "AAAA"}]}',
    "[" * 5000,
    '"' + "a" * 60_000 + '"',
]


def _leaky(details: str, tmp) -> list[str]:
    bad = [str(tmp), "Traceback", 'File "', ".py", "sqlite", "master", "Error(", "KeyError", "/home", "/tmp"]
    return [b for b in bad if b in details]


def test_report_rpcs_leak_nothing_and_never_internal(served):
    from tracemark.v1 import forensics_pb2 as pb

    forensics, _, _, tmp = served
    seen = []
    for report_id in ODD_IDS:
        for call in (
            lambda r: forensics.GetReport(pb.GetReportRequest(report_id=r), timeout=5),
            lambda r: forensics.VerifyReport(pb.VerifyReportRequest(report_id=r), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(report_id)
            code, details = info.value.code(), info.value.details() or ""
            seen.append((report_id[:20], code))
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (
                report_id[:40],
                code,
            )
            assert not _leaky(details, tmp), (report_id[:40], details)
    for envelope in ODD_ENVELOPES:
        try:
            reply = forensics.VerifyReport(pb.VerifyReportRequest(envelope_json=envelope), timeout=5)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                envelope[:40],
                error.code(),
                error.details(),
            )
            assert not _leaky(error.details() or "", tmp), error.details()
        else:
            assert not reply.valid, envelope[:60]
