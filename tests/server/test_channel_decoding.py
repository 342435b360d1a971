"""The distributional channel where the server decodes: processor, teachers, queue, runtime wiring."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from tracemark.foundation.channel import (
    NO_CONTEXT,
    ChannelKey,
    ChannelSpec,
    GreenLists,
    Keyring,
    count_green,
    distinct_tuples,
    tokenizer_fingerprint,
)
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor
from tracemark.server.batching import ChannelKeys, GenerationQueue
from tracemark.server.config import ConfigError, load_settings
from tracemark.server.llm import DirectLLM, QueuedLLM
from tracemark.server.runtime import Runtime
from tracemark.server.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherInfo
from tracemark.server.teacher.local import LocalTeacher
from tracemark.server.teacher.reference import ReferenceTeacher
from tracemark.server.teacher.remote import OpenAITeacher, logit_bias, word_token_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MSG = [{"role": "user", "content": "What is 2 + 3?"}]


def _key(name: str, scope: str = "account") -> ChannelKey:
    return ChannelKey(secret=(name * 32).encode()[:32], scope=scope, name="" if scope == "provider" else name)


def _keyring(spec: ChannelSpec) -> Keyring:
    return Keyring(spec, _key("provider", "provider"), _key)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model_dir):
    return LocalTeacher(tiny_model_dir, quantization="none", device="cpu", max_batch_size=8)


def test_green_lists_are_pinned():
    """Speed work on the channel must keep ``green()`` bit-identical: a few values pinned."""
    lists = GreenLists(ChannelKey(bytes(range(32)), "provider"), 0.25)
    assert np.flatnonzero(lists.green(7, np.arange(64))).tolist() == [
        4, 6, 12, 18, 19, 24, 25, 28, 31, 36, 39, 40, 42, 43, 45, 56, 57, 58, 61, 62,
    ]  # fmt: skip
    assert np.flatnonzero(lists.green(NO_CONTEXT, np.arange(64))).tolist() == [
        1, 10, 12, 16, 22, 26, 29, 35, 38, 49, 55, 61,
    ]  # fmt: skip
    assert int(lists.seed(7)) == 4389168363881182300
    assert int(lists.row(123456, 50000).sum()) == 12500
    half = GreenLists(ChannelKey(bytes(range(32)), "provider"), 0.5)
    assert np.flatnonzero(half.green(3, np.arange(40))).tolist() == [
        1, 2, 6, 8, 9, 10, 11, 13, 18, 19, 21, 22, 29, 36, 39,
    ]  # fmt: skip


def test_processor_adds_delta_only_on_each_rows_green_ids():
    keyring = _keyring(ChannelSpec(provider_delta=1.0, account_delta=2.5))
    vocab, prev = 97, [5, 11, 11]
    rows = [keyring.lists_for("alice"), keyring.lists_for("bob"), None]
    scores = torch.randn(3, vocab)
    out = ChannelLogitsProcessor(rows)(
        torch.tensor([[1, prev[0]], [2, prev[1]], [3, prev[2]]]), scores.clone()
    )
    diff = (out - scores).numpy()
    for row, account in enumerate(["alice", "bob"]):
        expected = np.zeros(vocab, dtype=np.float32)
        expected[keyring.provider.row(prev[row], vocab)] += 1.0
        expected[keyring.account(account).row(prev[row], vocab)] += 2.5
        np.testing.assert_allclose(diff[row], expected, atol=1e-6)
        assert set(np.unique(diff[row]).round(4)) <= {0.0, 1.0, 2.5, 3.5}
    assert not diff[2].any()  # a row without keys is untouched
    assert not np.allclose(diff[0], diff[1])  # same prompt position, different accounts: different bias


def test_batch_mixing_accounts_biases_each_row_with_its_own_key(tiny_teacher):
    spec = tiny_teacher.configure_channel(ChannelSpec(provider_delta=0.0, account_delta=6.0))
    keyring = _keyring(spec)
    params = GenerationParams(max_new_tokens=48)
    plain = tiny_teacher.generate_batch([MSG], params)[0].text
    out = tiny_teacher.generate_batch(
        [MSG, MSG, MSG], params, channels=[keyring.lists_for("alice"), keyring.lists_for("bob"), None]
    )
    assert out[2].text == plain  # the row without keys decodes as without the channel
    assert out[0].text != out[1].text
    sampled = tiny_teacher.generate_batch(
        [MSG] * 4,
        GenerationParams(max_new_tokens=64, temperature=1.0, seed=3),
        channels=[keyring.lists_for(a) for a in ("alice", "bob", "alice", "bob")],
    )
    ids = [tiny_teacher.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in sampled]
    for own, other, rows in (("alice", "bob", ids[0::2]), ("bob", "alice", ids[1::2])):
        tuples = distinct_tuples(rows)
        mine, theirs = count_green(keyring.account(own), tuples), count_green(keyring.account(other), tuples)
        assert mine.n >= 30 and mine.fraction > 0.8 and theirs.fraction < 0.5


class _Recorder(TeacherBackend):
    """Records the channel rows the queue hands it."""

    def __init__(self) -> None:
        self.info = TeacherInfo(model_id="recorder", backend="test", quantization="none")
        self.seen: list = []

    def generate_batch(self, conversations, params, on_text=None, channels=None):
        self.seen.append(channels)
        return [Generation(text="#### 1") for _ in conversations]


def _labels(rows) -> list[list[str]]:
    return [[lists.key.label for lists, _ in row] for row in rows]


def test_queue_carries_each_jobs_account():
    keys = ChannelKeys(_keyring(ChannelSpec()))
    teacher = _Recorder()
    queue = GenerationQueue(teacher, max_batch=4, window_s=0.3, max_queue=8, channel=keys)
    futures = [queue.submit(MSG, GenerationParams(), account=a) for a in ("alice", None, "bob")]
    for future in futures:
        future.result(10)
    queue.close(timeout=5)
    rows = [row for batch in teacher.seen for row in batch]
    assert sorted(_labels(rows)) == sorted(
        [["provider@v1", "account:alice@v1"], ["provider@v1"], ["provider@v1", "account:bob@v1"]]
    )
    plain = GenerationQueue(teacher, max_batch=1, window_s=0, max_queue=2)  # no channel: no keyword
    plain.generate(MSG, GenerationParams(), timeout=10, account="alice")
    plain.close(timeout=5)
    assert teacher.seen[-1] is None


def test_llms_decode_for_the_bound_account():
    keys = ChannelKeys(_keyring(ChannelSpec()))
    teacher = _Recorder()
    queue = GenerationQueue(teacher, max_batch=1, window_s=0, max_queue=4, channel=keys)
    QueuedLLM(queue, "recorder").for_account("alice").chat(MSG)
    QueuedLLM(queue, "recorder").chat(MSG)
    queue.close(timeout=5)
    DirectLLM(teacher, channel=keys).for_account("bob").chat(MSG)
    assert _labels([b[0] for b in teacher.seen]) == [
        ["provider@v1", "account:alice@v1"],
        ["provider@v1"],
        ["provider@v1", "account:bob@v1"],
    ]


def _settings(tmp_path, **sections):
    base = {
        "teacher": {"backend": "tiny", "max_batch_size": 4, "batch_window_ms": 0},
        "rewrite": {"default_pipeline": ["identity"], "mandatory": []},
        "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}", "master_key_file": tmp_path / "master.key"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(overrides=base)


def _runtime(settings, teacher) -> Runtime:
    rt = Runtime(settings)
    rt.load_plugins()
    rt.open_ledger()
    rt.attach_teacher(teacher)
    return rt


def test_runtime_builds_the_keyring_from_the_master_secret(tmp_path, tiny_model_dir):
    teacher = LocalTeacher(tiny_model_dir, quantization="none", device="cpu")
    rt = _runtime(_settings(tmp_path, channel={"gamma": 0.3, "account_delta": 2.0}), teacher)
    try:
        spec = rt.channel_spec
        assert spec.gamma == 0.3 and spec.account_delta == 2.0 and spec.context_width == 1
        assert spec.tokenizer == tokenizer_fingerprint(teacher.tokenizer)
        assert rt.queue.channel is rt.channel
        alice = rt.channel.lists_for("alice")[1][0]
        assert alice.key.secret == rt.master.channel_key("alice").secret
        assert rt.channel.lists_for(None)[0][0].key.secret == rt.master.channel_key(None).secret
        described = rt.channel_description()
        assert described.startswith("channel(gamma=0.3") and spec.tokenizer in described
        for account in (None, "alice"):
            secret = rt.master.channel_key(account).secret
            assert secret.hex() not in described + repr(spec) + repr(teacher.info) + repr(rt.channel_spec)
    finally:
        rt.queue.close(timeout=5)
        rt.close()


def test_channel_disabled_in_config_means_no_bias(tmp_path, tiny_model_dir):
    teacher = LocalTeacher(tiny_model_dir, quantization="none", device="cpu")
    rt = _runtime(_settings(tmp_path, channel={"enabled": False}), teacher)
    try:
        assert rt.channel_spec is None and rt.channel is None and rt.queue.channel is None
        assert rt.channel_description() == "off (channel.enabled = false)"
        params = GenerationParams(max_new_tokens=32)
        assert rt.queue.generate(MSG, params, timeout=60, account="alice").text == (
            teacher.generate_batch([MSG], params)[0].text
        )
    finally:
        rt.queue.close(timeout=5)
        rt.close()


def test_reference_teacher_says_it_cannot_carry_the_channel(tmp_path):
    teacher = ReferenceTeacher({"What is 2 + 3?": "2 + 3 = 5\n#### 5"})
    rt = _runtime(_settings(tmp_path), teacher)
    try:
        assert rt.channel_spec is None and rt.queue.channel is None
        assert rt.channel_description().startswith("unavailable: reference solutions")
    finally:
        rt.queue.close(timeout=5)
        rt.close()


def test_logit_bias_needs_a_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="openai_tokenizer"):
        _settings(tmp_path, channel={"openai_logit_bias": True})


def _mock_openai(bodies: list[dict]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        reply = {"choices": [{"message": {"content": "#### 5"}}], "usage": {"completion_tokens": 2}}
        return httpx.Response(200, json=reply)

    return httpx.MockTransport(handle)


def test_openai_teacher_sends_a_keyed_logit_bias(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = OpenAITeacher("http://endpoint.test/v1", "m")
    bodies: list[dict] = []
    teacher._client = httpx.Client(base_url="http://endpoint.test/v1", transport=_mock_openai(bodies))
    spec = teacher.configure_channel(
        ChannelSpec(provider_delta=1.0, account_delta=2.0), tokenizer=tokenizer, max_bias_tokens=20
    )
    assert spec.context_width == 0 and spec.tokenizer == tokenizer_fingerprint(tokenizer)
    assert "via logit_bias" in teacher.info.extra["channel"]
    keyring = _keyring(spec)
    names = ["alice", "bob", None]
    rows = [keyring.lists_for(name) for name in names]
    conversations = [[{"role": "user", "content": str(name)}] for name in names]
    teacher.generate_batch(conversations, GenerationParams(max_new_tokens=8), channels=rows)
    teacher.generate_batch([MSG], GenerationParams(max_new_tokens=8))  # no channel: no bias
    teacher.close()
    assert "logit_bias" not in bodies[3]
    by_row = {b["messages"][0]["content"]: b["logit_bias"] for b in bodies[:3]}  # rows are sent concurrently
    assert len({json.dumps(bias, sort_keys=True) for bias in by_row.values()}) == 3  # differs per account
    candidates = word_token_ids(tokenizer)
    assert candidates and all(tokenizer.decode([i]).strip().isalpha() for i in candidates)
    for name, row in zip(names, rows):
        bias = by_row[str(name)]
        assert 0 < len(bias) <= 20 and bias == logit_bias(row, candidates, max_entries=20)
        for token, value in bias.items():
            expected = sum(d for lists, d in row if lists.green(NO_CONTEXT, np.array([int(token)]))[0])
            assert value == pytest.approx(expected) and value > 0


def test_openai_teacher_without_tokenizer_carries_no_channel():
    teacher = OpenAITeacher("http://endpoint.test/v1", "m")
    assert teacher.configure_channel(ChannelSpec()) is None
    assert teacher.info.extra["channel"].startswith("unavailable: logit_bias not configured")
    teacher.close()


def test_runtime_gives_an_openai_teacher_the_unigram_channel(tmp_path, tiny_model_dir):
    channel = {"openai_logit_bias": True, "openai_tokenizer": str(tiny_model_dir), "max_bias_tokens": 50}
    teacher = OpenAITeacher("http://endpoint.test/v1", "m")
    bodies: list[dict] = []
    teacher._client = httpx.Client(base_url="http://endpoint.test/v1", transport=_mock_openai(bodies))
    rt = _runtime(_settings(tmp_path, channel=channel), teacher)
    try:
        assert rt.channel_spec.context_width == 0 and rt.channel_spec.tokenizer
        rt.queue.generate(MSG, GenerationParams(max_new_tokens=4), timeout=30, account="alice")
        bias = bodies[-1]["logit_bias"]
        alice = GreenLists(rt.master.channel_key("alice"), rt.channel_spec.gamma)
        assert 0 < len(bias) <= 50 and any(alice.green(NO_CONTEXT, np.array([int(t) for t in bias])))
    finally:
        rt.queue.close(timeout=5)
        rt.close()
        teacher.close()


def test_rewriters_openai_llm_carries_the_callers_unigram_channel(tmp_path, tiny_model_dir):
    settings = _settings(
        tmp_path,
        rewrite={"llm": "openai", "llm_endpoint": "http://rewriter.test/v1", "llm_model": "r"},
        channel={"llm_tokenizer": str(tiny_model_dir)},
    )
    rt = _runtime(settings, LocalTeacher(tiny_model_dir, quantization="none", device="cpu"))
    bodies: list[dict] = []
    rt.llm.backend._client = httpx.Client(base_url="http://rewriter.test/v1", transport=_mock_openai(bodies))
    try:
        assert rt.llm_channel_spec.context_width == 0 and rt.channel_spec.context_width == 1
        rt._llm_for("alice").chat(MSG)
        rt._llm_for(None).chat(MSG)
        alice = GreenLists(rt.master.channel_key("alice"), rt.llm_channel_spec.gamma)
        provider = GreenLists(rt.master.channel_key(None), rt.llm_channel_spec.gamma)
        with_alice, anonymous = ([int(t) for t in b["logit_bias"]] for b in bodies)
        assert alice.green(NO_CONTEXT, np.array(with_alice)).any()
        assert provider.green(NO_CONTEXT, np.array(anonymous)).all()  # anonymous: the provider key only
    finally:
        rt.queue.close(timeout=5)
        rt.close()
        rt.llm.backend.close()


def test_channel_stacks_with_antidistillation_sampling(tiny_model_dir, tmp_path):
    from tracemark.foundation.problems import generate_problems
    from tracemark.server.teacher.ads import AntidistillationSampler

    heldout = [(p.question, p.solution) for p in generate_problems(4, seed=3)]
    sampler = AntidistillationSampler(str(tiny_model_dir), heldout, epsilon=0.05, cache_dir=tmp_path)
    teacher = LocalTeacher(tiny_model_dir, device="cpu", ads=sampler, ads_lambda=1.0)
    spec = teacher.configure_channel(ChannelSpec(provider_delta=0.0, account_delta=6.0))
    keyring = _keyring(spec)
    params = GenerationParams(max_new_tokens=64, temperature=1.0, seed=5)
    ads_only = teacher.generate_batch([MSG], params)[0].text
    both = teacher.generate_batch([MSG], params, channels=[keyring.lists_for("alice")])[0].text
    assert both != ads_only and teacher.channel_seconds > 0
    tuples = distinct_tuples([teacher.tokenizer(both, add_special_tokens=False)["input_ids"]])
    assert count_green(keyring.account("alice"), tuples).fraction > 0.7
