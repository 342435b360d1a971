"""Channel detection: black-box and white-box evidence, the tokenizer check, decoy keys, the null."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from tracemark.forensics.channel import (
    ChannelDetectionError,
    blackbox_evidence,
    check_tokenizer,
    collect_evidence,
    decoy_check,
    decoy_keys,
    score_keys,
    whitebox_evidence,
)
from tracemark.forensics.channel.calibrate import min_decoys
from tracemark.forensics.channel.detect import argmax_tuples
from tracemark.foundation.channel import (
    ChannelKey,
    ChannelSpec,
    GreenLists,
    Keyring,
    tokenizer_fingerprint,
)
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [f"Problem {i}: add {i} and {i + 3}, then explain." for i in range(12)]


def _key(name: str, scope: str = "account") -> ChannelKey:
    return ChannelKey(secret=hashlib.sha256(name.encode()).digest(), scope=scope, name=name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tracemark.foundation.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=32, layers=1, heads=2, seed=3)


@pytest.fixture(scope="module")
def suspect(tiny):
    from tracemark.forensics.adapters import parse_suspect

    s = parse_suspect(f"hf:{tiny}")
    s.device = "cpu"
    return s


@pytest.fixture(scope="module")
def spec(suspect):
    return ChannelSpec(tokenizer=tokenizer_fingerprint(suspect.tokenizer))


class GreenBiasedModel(torch.nn.Module):
    """A model whose logits are a base model's plus ``delta`` on ``key``'s green list (what a student that
    learnt the channel converges to)."""

    def __init__(self, base, key: ChannelKey, spec: ChannelSpec, delta: float) -> None:
        super().__init__()
        self.base, self.lists, self.delta, self.width = (
            base,
            GreenLists(key, spec.gamma),
            delta,
            spec.context_width,
        )
        self.config = base.config

    def forward(self, input_ids, **kw):
        out = self.base(input_ids=input_ids)
        vocab = out.logits.shape[-1]
        bias = torch.stack(
            [
                torch.stack([torch.from_numpy(self.lists.row(int(t), vocab).astype(np.float32)) for t in row])
                for row in input_ids
            ]
        )
        out.logits = out.logits + self.delta * bias
        return out


class FakeSample:
    def __init__(self, text):
        self.text = text


class WatermarkedSampler:
    """A black-box suspect whose completions are decoded under the channel (a perfect distiller)."""

    white_box = False
    spec = "fake:watermarked"

    def __init__(self, local, keyring, account):
        self.local, self.keyring, self.account = local, keyring, account

    def sample(self, prompt, *, n, max_new_tokens, temperature, seed, meta=None):
        tok, model = self.local.tokenizer, self.local.model
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        proc = ChannelLogitsProcessor([self.keyring.lists_for(self.account)] * n)
        torch.manual_seed(seed)
        out = model.generate(
            ids.repeat(n, 1),
            do_sample=True,
            top_k=0,
            max_new_tokens=max_new_tokens,
            logits_processor=[proc],
            pad_token_id=tok.pad_token_id,
            attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long),
        )
        return [FakeSample(tok.decode(r[ids.shape[1] :], skip_special_tokens=True)) for r in out]


def test_tokenizer_mismatch_is_refused(suspect, spec):
    assert check_tokenizer(spec, suspect.tokenizer) == spec.tokenizer
    with pytest.raises(ChannelDetectionError, match="not the channel's"):
        check_tokenizer(ChannelSpec(tokenizer="0" * 16), suspect.tokenizer)
    with pytest.raises(ChannelDetectionError, match="names no tokenizer"):
        blackbox_evidence(["abc"], spec=ChannelSpec(), tokenizer=suspect.tokenizer)


def test_blackbox_detects_the_account_and_provider_not_others(suspect, spec):
    provider, alice = _key("provider", "provider"), _key("alice")
    keyring = Keyring(spec, provider, lambda name: _key(name))
    sampler = WatermarkedSampler(suspect, keyring, "alice")
    evidence = collect_evidence(
        sampler,
        PROMPTS,
        spec=spec,
        mode="black-box",
        tokenizer=suspect.tokenizer,
        max_new_tokens=48,
        beacon="b",
    )
    assert evidence.n > 200 and evidence.completions == len(PROMPTS)
    prov, acc, bob = score_keys(evidence, [provider, alice, _key("bob")], spec=spec)
    assert prov.p_value < 1e-6 and acc.p_value < 1e-6
    assert bob.p_value > 1e-3
    assert acc.fraction > spec.gamma + 0.1


def test_blackbox_clean_suspect_is_not_flagged(suspect, spec):
    evidence = collect_evidence(suspect, PROMPTS, spec=spec, mode="black-box", max_new_tokens=32, beacon="x")
    (test,) = score_keys(evidence, [_key("provider", "provider")], spec=spec)
    assert test.p_value > 1e-3
    assert evidence.as_dict()["distinct_tuples"] == evidence.n


def test_whitebox_argmax_detects_a_green_biased_model(suspect, spec):
    key = _key("carol")
    biased = GreenBiasedModel(suspect.model, key, spec, delta=4.0)
    rows = [suspect.encode(p) for p in PROMPTS]
    tuples = argmax_tuples(biased, rows, width=1)
    clean = argmax_tuples(suspect.model, rows, width=1)
    from tracemark.forensics.channel import score_tuples

    assert score_tuples(tuples, key=key, spec=spec).p_value < 1e-6
    assert score_tuples(clean, key=key, spec=spec).p_value > 1e-3
    assert score_tuples(tuples, key=_key("dave"), spec=spec).p_value > 1e-3


def test_whitebox_evidence_checks_its_inputs(suspect, spec):
    with pytest.raises(ChannelDetectionError, match="black-box"):
        whitebox_evidence(WatermarkedSampler(suspect, None, None), ["x"], spec=spec)
    with pytest.raises(ChannelDetectionError, match="not the channel's"):
        whitebox_evidence(suspect, ["x"], spec=ChannelSpec(tokenizer="f" * 16))
    ev = collect_evidence(suspect, PROMPTS[:3], spec=spec, mode="white-box", max_new_tokens=8, beacon="w")
    assert ev.mode == "white-box" and ev.completions == 3 and ev.n > 0
    with pytest.raises(ChannelDetectionError, match="at least one public prompt"):
        collect_evidence(suspect, [], spec=spec, mode="black-box")


def test_decoy_keys_are_public_and_distinct():
    a, b = decoy_keys("beacon", 3), decoy_keys("beacon", 3)
    assert [k.secret for k in a] == [k.secret for k in b]
    assert len({k.secret for k in a}) == 3 and all(k.scope == "decoy" for k in a)
    assert decoy_keys("other", 1)[0].secret != a[0].secret
    with pytest.raises(ValueError):
        decoy_keys("x", 0)


def test_decoy_check_passes_on_real_suspect_text(suspect, spec):
    evidence = collect_evidence(suspect, PROMPTS, spec=spec, mode="black-box", max_new_tokens=32, beacon="d")
    check = decoy_check(evidence.tuples, spec=spec, seed="d", k=min_decoys(0.05))
    assert check.passed, check.as_dict()
    assert [r.decidable for r in check.rates] == [True, True, False]
    assert check.as_dict()["decoy_keys"] == 400


def test_decoy_check_fails_on_keyed_text(spec):
    """Sanity of the check itself: tuples all green under every decoy would be flagged."""
    keys = decoy_keys("s", 200)
    rng = np.random.default_rng(0)
    tuples = set()
    for ctx in range(60):  # choose, per context, tokens green for many decoys at once
        toks = rng.integers(0, 5000, size=400)
        counts = sum(GreenLists(k, spec.gamma).green(ctx, toks).astype(int) for k in keys[:40])
        tuples.update((ctx, int(t)) for t in toks[np.argsort(-counts)[:20]])
    assert not decoy_check(tuples, spec=spec, seed="s", k=200).passed


@settings(max_examples=25, deadline=None)
@given(
    seed=st.binary(min_size=16, max_size=32),
    gamma=st.sampled_from([0.1, 0.25, 0.5]),
    ctx=st.integers(0, 10**6),
)
def test_green_is_bernoulli_gamma(seed, gamma, ctx):
    """Over tokens, a random key's green list is Bernoulli(gamma): chi-square on 20,000 tokens."""
    lists = GreenLists(ChannelKey(secret=seed, scope="decoy", name="h"), gamma)
    n = 20_000
    green = int(lists.green(ctx, np.arange(n)).sum())
    stat = chisquare([green, n - green], [gamma * n, (1 - gamma) * n])
    assert stat.pvalue > 1e-4


@settings(max_examples=20, deadline=None)
@given(keys=st.lists(st.binary(min_size=16, max_size=16), min_size=60, max_size=60, unique=True))
def test_green_of_one_tuple_over_random_keys_is_bernoulli(keys):
    """The null the binomial rests on: a fixed tuple is green with probability gamma over the key."""
    gamma = 0.25
    hits = sum(
        bool(GreenLists(ChannelKey(secret=k, scope="decoy", name="h"), gamma).green(7, np.array([11]))[0])
        for k in keys
    )
    stat = chisquare([hits, len(keys) - hits], [gamma * len(keys), (1 - gamma) * len(keys)])
    assert stat.pvalue > 1e-4
