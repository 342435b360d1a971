"""A real tracemark server on 127.0.0.1:0 for the fuzz suite: tokens per role, captured logs, secrets.

Everything here is self-contained (test modules are imported in importlib mode): the settings mirror
tests/integration/conftest.py with a tiny random teacher, the default rewriter pipeline ``identity`` and the
mandatory ``watermark`` step as in production, so traces are signed and the issuer holds real pairs.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher

# One token per role. Until roles land every token is a plain account (and the role properties fail).
TOKENS = {
    "customer": ("fz-customer", "tm_fuzz_customer_Q7wz3NcV0dXkP2yLr8sT"),
    "compliance": ("fz-compliance", "tm_fuzz_compliance_M4hJ9bKe1uGq6ZoWa5Fi"),
    "admin": ("fz-admin", "tm_fuzz_admin_Xc2Rt8YvB3nLs0KpD7mQ"),
}
MAX_MESSAGE_BYTES = 256 * 1024
MAX_PROBLEM_CHARS = 500
MAX_TRACE_CHARS = 64_000
MAX_NEW_TOKENS = 8
MAX_QUEUE = 8
WATERMARK_FRACTION = 0.1


def _settings(tmp_path):
    return load_settings(
        overrides={
            "server": {
                "address": "127.0.0.1:0",
                "max_problem_chars": MAX_PROBLEM_CHARS,
                "max_trace_chars": MAX_TRACE_CHARS,
                "max_message_bytes": MAX_MESSAGE_BYTES,
                "max_workers": 16,
            },
            "teacher": {
                "backend": "tiny",
                "max_new_tokens": MAX_NEW_TOKENS,
                "max_batch_size": 4,
                "batch_window_ms": 5,
                "max_queue": MAX_QUEUE,
            },
            "rewrite": {
                "default_pipeline": ["identity"],
                "mandatory": ["watermark"],
                "timeout_s": 5,
                "watermark_fraction": WATERMARK_FRACTION,
                # 7-digit targets (the most a scheme allows): long enough that a target alone is a secret
                # worth searching for.
                "target_digits": 7,
            },
            "ledger": {
                "url": f"sqlite:///{tmp_path / 'ledger.db'}",
                "master_key_file": tmp_path / "master.key",
            },
        }
    )


def _token_store(tmp_path) -> TokenStore:
    """Tokens with roles where the server knows roles: the tokens file (as `tracemark accounts add --role`
    writes it), else a ``roles=`` argument, else plain accounts."""
    lines = []
    for role, (account, token) in TOKENS.items():
        lines += [f"[accounts.{account}]", f'token_sha256 = "{hash_token(token)}"', f'role = "{role}"', ""]
    path = tmp_path / "tokens.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    try:
        return TokenStore.load(path)
    except Exception:  # a loader that rejects `role` keys: fall back to the constructor
        pass
    hashes = {account: hash_token(token) for account, token in TOKENS.values()}
    if "roles" in inspect.signature(TokenStore.__init__).parameters:
        return TokenStore(hashes, roles={account: role for role, (account, _) in TOKENS.items()})
    return TokenStore(hashes)


class LogCapture(logging.Handler):
    """Keeps every log record (message and formatted traceback) emitted while the server runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lock_ = threading.Lock()
        self.texts: list[str] = []
        self.levels: Counter = Counter()
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name} {record.levelname} {record.getMessage()}"
            if record.exc_info:
                text += "\n" + self._formatter.formatException(record.exc_info)
        except Exception as exc:  # a record whose message cannot be formatted is itself worth keeping
            text = f"{record.name} unformattable: {exc!r}"
        with self.lock_:
            self.texts.append(text)
            self.levels[record.levelname] += 1


@dataclass(repr=False)
class FuzzServer:
    server: TracemarkServer
    address: str
    logs: LogCapture
    secrets: dict[str, str]  # what -> secret text that must never appear in logs or foreign responses
    own_pairs: dict[str, list[str]]  # account -> its own pair texts (allowed in its own traces)
    stats: Counter = field(default_factory=Counter)  # (rpc, status name) -> count
    stats_lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:  # hypothesis prints fixtures of failing examples: never the secrets
        return f"FuzzServer({self.address}, {sum(self.stats.values())} requests)"

    def record(self, rpc: str, code: grpc.StatusCode) -> None:
        with self.stats_lock:
            self.stats[(rpc, code.name)] += 1

    def health(self) -> int:
        channel = grpc.insecure_channel(self.address)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        finally:
            channel.close()


SUMMARIES: list[str] = []


def summary_line(stats: Counter, label: str) -> str:
    by_code: Counter = Counter()
    for (_rpc, code), n in stats.items():
        by_code[code] += n
    total = sum(by_code.values())
    bad = by_code["INTERNAL"] + by_code["UNKNOWN"]
    codes = ", ".join(f"{code}={n}" for code, n in sorted(by_code.items(), key=lambda kv: -kv[1]))
    return f"fuzz[{label}]: {total} requests; {codes}; INTERNAL/UNKNOWN={bad}"


@pytest.fixture(scope="module")
def fuzz_server(request, tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("fuzz-server")
    capture = LogCapture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    server = TracemarkServer(_settings(tmp), teacher=teacher, tokens=_token_store(tmp))
    server.start()
    try:
        assert server.wait_ready(120), server.runtime.load_error
        rt = server.runtime
        secrets = {f"token of {role}": token for role, (_, token) in TOKENS.items()}
        for v in rt.master.versions:
            secrets[f"master key v{v}"] = rt.master._secret(v).hex()
            secrets[f"account key of {TOKENS['customer'][0]} v{v}"] = rt.master.account_key(
                TOKENS["customer"][0], version=v
            ).hex()
        own_pairs: dict[str, list[str]] = {}
        for account, _ in TOKENS.values():
            for pair in rt.issuer.all_pairs_for(account):
                secrets[f"pair {pair.index} of {account}"] = pair.text
                secrets[f"trigger {pair.index} of {account}"] = pair.trigger
                secrets[f"target {pair.index} of {account}"] = pair.target
                own_pairs.setdefault(account, []).extend([pair.text, pair.trigger, pair.target])
        fuzz = FuzzServer(server, f"127.0.0.1:{server.port}", capture, secrets, own_pairs)
        yield fuzz
        SUMMARIES.append(summary_line(fuzz.stats, request.module.__name__.rsplit(".", 1)[-1]))
    finally:
        server.stop(grace=1)
        root.removeHandler(capture)
        root.setLevel(previous)


@pytest.fixture(autouse=True)
def server_survives(request):
    """After each test (a batch of requests): the server is still SERVING and its log holds no secret and
    no ERROR record (bad input is not a server fault)."""
    if "fuzz_server" not in request.fixturenames:
        yield
        return
    fuzz = request.getfixturevalue("fuzz_server")
    start = len(fuzz.logs.texts)
    yield
    assert fuzz.health() == health_pb2.HealthCheckResponse.SERVING
    new = fuzz.logs.texts[start:]
    for what, secret in fuzz.secrets.items():
        leaks = [t for t in new if secret in t]
        assert not leaks, f"the server log reveals the {what}: {leaks[0][:300]!r}"
    errors = [t for t in new if t.split("\n", 1)[0].split(" ")[1] in ("ERROR", "CRITICAL")]
    assert not errors, f"{len(errors)} ERROR log records during fuzzing, first: {errors[0][:600]!r}"


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARIES:
        terminalreporter.write_line(line)
