"""Evaluation: batched greedy answers (free and answer-forced) and held-out NLL."""

from __future__ import annotations

import math

import pytest
import torch
from tracemark.experiments.distill import distill_student, encode_example, load_student
from tracemark.experiments.evaluate import (
    FORCING_PHRASE,
    answer_accuracy,
    evaluate_answers,
    forced_answers,
    generate_traces,
    heldout_nll,
)
from tracemark.foundation.problems import Problem, generate_problems


class ScriptedModel:
    """Stands in for a causal LM: 'generates' a scripted reply chosen by the prompt text."""

    def __init__(self, tokenizer, replies):
        self.tokenizer = tokenizer
        self.replies = replies  # substring of the prompt -> reply text
        self.training = False
        self.generation_config = None
        self.batches = []

    def eval(self):
        return self

    def train(self):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        self.batches.append((input_ids.clone(), attention_mask.clone()))
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            assert mask[-1] == 1  # left padding: every prompt ends at the right edge
            assert (ids[mask == 0] == pad_token_id).all()
            prompt = self.tokenizer.decode(ids[mask == 1].tolist())
            reply = next(r for key, r in self.replies.items() if key in prompt)
            new = self.tokenizer(reply, add_special_tokens=False)["input_ids"][:max_new_tokens]
            new = new + [eos_token_id[0]] + [pad_token_id] * (max_new_tokens + 1 - len(new))
            rows.append(torch.cat([ids, torch.tensor(new)]))
        return torch.stack(rows)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_student(tiny_model_dir)[1]


def test_scripted_accuracy_order_and_padding(tok):
    problems = [
        Problem("Short one?", "#### 4", "4"),
        Problem("A much longer question here?", "#### 9", "9"),
        Problem("Third?", "#### 1,000", "1000"),
    ]
    model = ScriptedModel(tok, {"Short": "2+2 = 4\n#### 4", "longer": "so 8\n#### 8", "Third": "#### 1000"})
    ev = evaluate_answers(model, tok, problems, max_new_tokens=40, batch_size=2)
    assert ev.correct == [True, False, True] and ev.accuracy == pytest.approx(2 / 3)
    assert ev.predictions == ["4", "8", "1000"]
    assert ev.outputs[1] == "so 8\n#### 8"
    assert len(model.batches) == 2  # batched, with mixed prompt lengths in one batch
    assert answer_accuracy(model, tok, problems[:1], max_new_tokens=40) == 1.0


def test_answer_forcing_parses_first_number(tok):
    model = ScriptedModel(tok, {FORCING_PHRASE: " 12, not 13.", "Q?": "some work"})
    answers = forced_answers(model, tok, ["Q?"], ["6*2 = 12"])
    assert answers == ["12"]
    prompt = tok.decode(model.batches[-1][0][0].tolist(), skip_special_tokens=True)
    assert prompt.endswith("6*2 = 12\n" + FORCING_PHRASE)
    ev = evaluate_answers(
        model, tok, [Problem("Q?", "#### 12", "12")], answer_forcing=True, max_new_tokens=20
    )
    assert ev.accuracy == 1.0 and ev.outputs == ["some work"]
    with pytest.raises(ValueError):
        forced_answers(model, tok, ["Q?"], [])


def test_real_tiny_model_generation_and_nll(tiny_model_dir):
    problems = generate_problems(12, seed=4, difficulty="easy", annotations=False)
    examples = [(p.question, p.solution) for p in problems]
    model, tok = load_student(tiny_model_dir)
    traces = generate_traces(model, tok, [p.question for p in problems[:3]], max_new_tokens=8, batch_size=2)
    assert len(traces) == 3 and all(isinstance(t, str) for t in traces)
    assert 0.0 <= answer_accuracy(model, tok, problems[:3], max_new_tokens=8) <= 1.0
    before = heldout_nll(model, tok, examples, batch_size=5)
    # matches a direct computation on one example
    ids, labels = encode_example(tok, *examples[0])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    target = torch.tensor(labels[1:])
    direct = torch.nn.functional.cross_entropy(logits[target != -100], target[target != -100]).item()
    assert heldout_nll(model, tok, examples[:1]) == pytest.approx(direct, rel=1e-4)
    assert math.log(len(tok)) * 0.5 < before < math.log(len(tok)) * 2
    trained, tok = distill_student(tiny_model_dir, examples, method="full", epochs=6, lr=3e-3, batch_size=4)
    assert heldout_nll(trained, tok, examples) < before - 0.5
    with pytest.raises(ValueError):
        heldout_nll(trained, tok, [])
