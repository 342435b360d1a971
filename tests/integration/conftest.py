"""A real tracemark server on 127.0.0.1:0 with a tiny random teacher, and clients for it."""

from __future__ import annotations

import pytest
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher

TOKENS = {"alice": "tm_alice_test_token", "bob": "tm_bob_test_token", "audit": "tm_audit_test_token"}
ROLES = {"audit": "compliance"}  # alice and bob are customers


def make_settings(tmp_path, **sections):
    base = {
        "server": {"address": "127.0.0.1:0", "max_problem_chars": 500, "max_message_bytes": 64 * 1024},
        "teacher": {"backend": "tiny", "max_new_tokens": 24, "max_batch_size": 4, "batch_window_ms": 20},
        "rewrite": {"default_pipeline": ["identity"], "mandatory": [], "timeout_s": 5},
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.db'}", "master_key_file": tmp_path / "master.key"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(overrides=base)


def token_store() -> TokenStore:
    return TokenStore({account: hash_token(token) for account, token in TOKENS.items()}, roles=ROLES)


@pytest.fixture(scope="module")
def running_server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("server")
    teacher = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama")
    server = TracemarkServer(make_settings(tmp), teacher=teacher, tokens=token_store())
    server.start()
    assert server.wait_ready(60), server.runtime.load_error
    yield server
    server.stop(grace=1)


@pytest.fixture
def alice(running_server):
    stubs = Stubs(open_channel(f"127.0.0.1:{running_server.port}", token=TOKENS["alice"]))
    yield stubs
    stubs.close()


@pytest.fixture
def compliance(running_server):
    """A client with the compliance role (ForensicsService)."""
    stubs = Stubs(open_channel(f"127.0.0.1:{running_server.port}", token=TOKENS["audit"]))
    yield stubs
    stubs.close()


@pytest.fixture
def anonymous(running_server):
    stubs = Stubs(open_channel(f"127.0.0.1:{running_server.port}"))
    yield stubs
    stubs.close()
