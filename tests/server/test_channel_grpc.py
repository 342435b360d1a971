"""Over real gRPC: text an account receives carries that account's channel key (and the provider's),
not another account's; GetTeacherInfo and the logs describe the channel without any key material."""

from __future__ import annotations

import logging

import pytest
from tracemark.forensics.channel.score import binomial_p
from tracemark.forensics.keys import ENV_KEY, MasterSecret
from tracemark.forensics.tlog import find_entries, open_channel_commitment, provider_entries
from tracemark.foundation.channel import GreenLists, count_green, distinct_tuples
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher
from tracemark.v1 import teacher_pb2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENS = {"alice": "tm_alice_channel_token", "bob": "tm_bob_channel_token"}
MASTER_HEX = "5a" * 32  # a fixed master secret: the test's outcome does not depend on a random key


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("channel-server")
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0"},
            "teacher": {"backend": "tiny", "max_new_tokens": 96, "max_batch_size": 4, "batch_window_ms": 20},
            "rewrite": {"default_pipeline": ["identity"], "mandatory": []},
            "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}"},
            "channel": {"provider_delta": 4.0, "account_delta": 4.0},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_KEY, MASTER_HEX)
        teacher = LocalTeacher(
            tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny-random-llama"
        )
        tokens = TokenStore({a: hash_token(t) for a, t in TOKENS.items()})
        srv = TracemarkServer(settings, teacher=teacher, tokens=tokens)
        srv.start()
        assert srv.wait_ready(60), srv.runtime.load_error
        yield srv
        srv.stop(grace=1)


def _stubs(server, account: str) -> Stubs:
    return Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKENS[account]))


def test_generated_text_carries_the_callers_key(server):
    stubs = _stubs(server, "alice")
    try:
        traces = [
            stubs.teacher.Generate(
                teacher_pb2.GenerateRequest(
                    problem=f"What is {n} + 3?",
                    params=teacher_pb2.GenerationParams(temperature=1.0, seed=100 + n, max_new_tokens=96),
                ),
                timeout=60,
            ).trace
            for n in range(4)
        ]
    finally:
        stubs.close()
    tokenizer = server.runtime.teacher.tokenizer
    tuples = distinct_tuples(tokenizer(t, add_special_tokens=False)["input_ids"] for t in traces)
    master = MasterSecret.load()  # the fixed master secret of the fixture, through the environment
    spec = server.runtime.channel_spec

    def p_value(account):
        count = count_green(GreenLists(master.channel_key(account), spec.gamma), tuples)
        return binomial_p(count.green, count.n, spec.gamma), count

    p_alice, alice = p_value("alice")
    p_provider, _ = p_value(None)
    p_bob, bob = p_value("bob")
    assert alice.n >= 100
    assert p_alice < 1e-6 and p_provider < 1e-6, (alice, p_provider)
    assert p_bob > 1e-3, bob
    # The keys were committed in the transparency log before text was decoded under them.
    engine = server.runtime.engine
    assert server.runtime.issuer.scheme.channel == spec
    assert open_channel_commitment(
        provider_entries(engine)[1].body, master.channel_key(None).secret, scope="provider"
    )
    entry = next(e for e in find_entries(engine, kind="account-key") if e.body["account"] == "alice")
    assert open_channel_commitment(entry.body, master.channel_key("alice").secret, scope="account")
    assert server.runtime.channel_tokenizer is server.runtime.teacher.tokenizer
    print(f"alice {alice.green}/{alice.n} p={p_alice:.2e}; provider p={p_provider:.2e}; bob p={p_bob:.3f}")


def test_teacher_info_and_logs_describe_the_channel_without_keys(server, caplog):
    stubs = _stubs(server, "bob")
    try:
        old = server.runtime.queue
        with caplog.at_level(logging.DEBUG):
            server.runtime.attach_teacher(server.runtime.teacher)  # re-run the start-up wiring, logged
        old.close(timeout=5)
        info = stubs.teacher.GetTeacherInfo(teacher_pb2.GetTeacherInfoRequest(), timeout=10)
    finally:
        stubs.close()
    spec = server.runtime.channel_spec
    assert info.decoding.startswith(
        "standard; channel(gamma=0.25, provider_delta=4, account_delta=4, width=1"
    )
    assert spec.tokenizer and spec.tokenizer in info.decoding
    assert "distributional channel: channel(gamma=0.25" in caplog.text
    master = MasterSecret.load()
    shown = str(info) + caplog.text + repr(spec) + str(spec.as_dict())
    for account in (None, "alice", "bob"):
        assert master.channel_key(account).secret.hex() not in shown
    assert MASTER_HEX not in shown


def test_stream_and_rewriter_llm_calls_decode_for_the_caller(server, monkeypatch):
    queue = server.runtime.queue
    seen: list[str | None] = []
    submit = queue.submit

    def spy(messages, params, on_text=None, account=None, **kw):
        seen.append(account)
        return submit(messages, params, on_text=on_text, account=account, **kw)

    monkeypatch.setattr(queue, "submit", spy)
    captured = []
    run = server.runtime.pipeline.run

    def spy_run(trace, **kw):
        captured.append(kw["context"])
        return run(trace, **kw)

    monkeypatch.setattr(server.runtime.pipeline, "run", spy_run)
    stubs = _stubs(server, "bob")
    try:
        request = teacher_pb2.GenerateRequest(
            problem="What is 1 + 3?", params=teacher_pb2.GenerationParams(max_new_tokens=8)
        )
        replies = list(stubs.teacher.GenerateStream(request, timeout=60))
    finally:
        stubs.close()
    assert replies[-1].HasField("done") and seen == ["bob"]
    assert captured and captured[0].llm.account == "bob"
    captured[0].llm.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)
    assert seen == ["bob", "bob"]  # a rewriter's LLM call goes through the queue for the caller
