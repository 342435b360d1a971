"""Replicas with a model teacher and a model-free (reference) teacher share one ledger and one scheme:
``channel.tokenizer`` names the deployment's channel vocabulary, so the reference replica logs the same
channel spec (it cannot decode with it) and the model replica starts on the same ledger."""

from __future__ import annotations

import pytest
from tracemark.forensics.keys import ENV_KEY
from tracemark.foundation.channel import tokenizer_fingerprint
from tracemark.server.app import TracemarkServer
from tracemark.server.auth import TokenStore, hash_token
from tracemark.server.client import Stubs, open_channel
from tracemark.server.config import load_settings
from tracemark.server.teacher.local import LocalTeacher
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.v1 import teacher_pb2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKEN = "tm_replica_alice_token"


def _settings(tmp, tokenizer_dir):
    return load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0"},
            "teacher": {"max_new_tokens": 32, "max_batch_size": 2, "batch_window_ms": 5},
            "rewrite": {"default_pipeline": ["identity"], "mandatory": ["watermark"], "watermark_fraction": 1},
            "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}"},
            "channel": {"tokenizer": str(tokenizer_dir)},
        }
    )


def _generate(server, problem):
    stubs = Stubs(open_channel(f"127.0.0.1:{server.port}", token=TOKEN))
    try:
        return stubs.teacher.Generate(teacher_pb2.GenerateRequest(problem=problem), timeout=60).trace
    finally:
        stubs.close()


def test_reference_and_model_replicas_share_one_scheme(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ENV_KEY, "3c" * 32)
    tokens = TokenStore({"alice": hash_token(TOKEN)})
    reference = TracemarkServer(
        _settings(tmp_path, tiny_model_dir),
        teacher=ReferenceTeacher({"What is 2 + 3?": "2 + 3 = 5\n#### 5"}),
        tokens=tokens,
    )
    reference.start()
    assert reference.wait_ready(60), reference.runtime.load_error
    try:
        spec = reference.runtime.channel_spec
        assert spec is not None and reference.runtime.channel is None  # logged, not decoded with
        model = LocalTeacher(tiny_model_dir, device="cpu", backend_name="tiny", model_id="tiny")
        assert spec.tokenizer == tokenizer_fingerprint(model.tokenizer)
        assert reference.runtime.issuer.scheme.channel == spec
        assert "5" in _generate(reference, "What is 2 + 3?")  # alice's key commitment logged here
        replica = TracemarkServer(_settings(tmp_path, tiny_model_dir), teacher=model, tokens=tokens)
        replica.start()
        try:
            assert replica.wait_ready(60), replica.runtime.load_error
            assert replica.runtime.channel is not None
            assert replica.runtime.issuer.scheme == reference.runtime.issuer.scheme
            _generate(replica, "What is 4 + 4?")  # decodes under alice's channel key: no SchemeMismatch
        finally:
            replica.stop(grace=1)
    finally:
        reference.stop(grace=1)
