"""A teacher served by vLLM with tracemark-vllm: the server names the account in ``vllm_xargs`` and the
engine's processor, built from an exported channel key file, biases exactly as the server's keyring."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from tracemark.forensics.channel_keys import export_channel_keys, write_channel_key_file
from tracemark.foundation.channel import tokenizer_fingerprint
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor
from tracemark.server.config import ConfigError, load_settings
from tracemark.server.runtime import Runtime
from tracemark.server.teacher.base import GenerationParams
from tracemark.server.teacher.remote import OpenAITeacher

MSG = [{"role": "user", "content": "What is 2 + 3?"}]


def _settings(tmp_path, **channel):
    return load_settings(
        overrides={
            "teacher": {"backend": "tiny", "max_batch_size": 4, "batch_window_ms": 0},
            "rewrite": {"default_pipeline": ["identity"], "mandatory": []},
            "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}", "master_key_file": tmp_path / "master.key"},
            "channel": channel,
        }
    )


def test_vllm_plugin_config_needs_the_vocabulary(tmp_path):
    with pytest.raises(ConfigError, match="openai_vllm_plugin needs openai_tokenizer"):
        _settings(tmp_path, openai_vllm_plugin=True)


def test_server_names_the_account_and_the_plugin_applies_the_same_keys(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("tracemark_vllm")
    from tracemark_vllm.processor import TracemarkChannelProcessor

    bodies: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "#### 5"}}], "usage": {}})

    teacher = OpenAITeacher("http://vllm.test/v1", "m")
    teacher._client = httpx.Client(base_url="http://vllm.test/v1", transport=httpx.MockTransport(handle))
    settings = _settings(tmp_path, openai_vllm_plugin=True, openai_tokenizer=str(tiny_model_dir))
    rt = Runtime(settings)
    rt.load_plugins()
    rt.open_ledger()
    rt.attach_teacher(teacher)
    try:
        spec = rt.channel_spec
        assert spec.context_width == 1 and spec.tokenizer == tokenizer_fingerprint(teacher.channel_tokenizer)
        assert "inside vLLM" in teacher.info.extra["channel"]
        rt.queue.generate(MSG, GenerationParams(max_new_tokens=4), timeout=30, account="alice")
        rt.queue.generate(MSG, GenerationParams(max_new_tokens=4), timeout=30)
        assert bodies[0]["vllm_xargs"] == {"tracemark_account": "alice"} and "logit_bias" not in bodies[0]
        assert "vllm_xargs" not in bodies[1] and "logit_bias" not in bodies[1]

        # the engine host: keys exported from the server's master secret under the server's spec
        path = tmp_path / "channel.keys"
        write_channel_key_file(path, export_channel_keys(rt.master, spec, ["alice"]))
        monkeypatch.setenv("TRACEMARK_CHANNEL_KEY_FILE", str(path))
        config = type("C", (), {"model_config": type("M", (), {"tokenizer": str(tiny_model_dir)})()})()
        state = type("S", (), {"max_num_reqs": 2})()
        proc = TracemarkChannelProcessor(config, state)
        sampling = type("P", (), {"extra_args": bodies[0]["vllm_xargs"]})()
        proc.validate_params(sampling)
        proc.add_request(1, sampling)
        ctx = type("X", (), {"expanded_idx_mapping": torch.tensor([1]), "input_ids": torch.tensor([9])})()
        logits = torch.randn(1, 64)
        rows = [rt.channel.lists_for("alice")]  # the rows the server's own decoder would use
        expected = ChannelLogitsProcessor(rows)(torch.tensor([[9]]), logits.clone())
        assert torch.equal(proc.apply(logits.clone(), ctx), expected)
    finally:
        rt.queue.close(timeout=5)
        rt.close()
        teacher.close()
