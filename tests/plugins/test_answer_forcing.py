"""Answer-forcing evaluation of the teacher before/after rewriting."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest
from tracemark.experiments.answer_forcing import answer_forced, clopper_pearson, teacher_accuracy
from tracemark.plugins.builtin.restructure import restructure


def _reader(h):
    """A 'teacher' that answers with the last number of the solution it was shown."""

    def respond(messages, i):
        solution = messages[-1]["content"].split("Solution:\n", 1)[1].rsplit("\n\nFinal answer?", 1)[0]
        numbers = [
            tok for tok in solution.replace("\\boxed{", " ").replace("}", " ").split() if tok.isdigit()
        ]
        return f"\\boxed{{{numbers[-1]}}}" if numbers else "I don't know."

    return h.ScriptedLLM(respond)


def test_answer_forced_with_a_chat_backend(h):
    llm = _reader(h)
    assert answer_forced(llm, "2+3?", "2 + 3 = 5\n#### 5") == "5"
    assert answer_forced(llm, "?", "no idea") is None
    call = llm.calls[0]
    assert call["temperature"] == 0.0 and "\\boxed{ANSWER}" in call["messages"][0]["content"]


def test_teacher_accuracy_before_and_after_restructure(h):
    items = h.procedural_traces(24, seed=5)
    llm = _reader(h)
    before = teacher_accuracy(llm, [(p, t, a) for p, t, a in items], workers=4)
    after = teacher_accuracy(llm, [(p, restructure(t), a) for p, t, a in items], workers=4)
    integers = sum(a.isdigit() for _, _, a in items)
    assert before.n == after.n == 24
    assert after.correct == integers  # the reader sees only integers; restructure keeps every answer
    assert before.correct <= integers and after.unanswered == 0


def test_report_interval_is_clopper_pearson(h):
    llm = h.ScriptedLLM(lambda m, i: "\\boxed{1}" if i % 4 else "\\boxed{0}")
    items = [("p", "t", "1")] * 40
    report = teacher_accuracy(llm, items)
    assert report.correct == 30 and report.accuracy == 0.75
    ci = binomtest(30, 40).proportion_ci(confidence_level=0.95, method="exact")
    assert report.ci_low == pytest.approx(ci.low) and report.ci_high == pytest.approx(ci.high)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_answer_forcing_with_a_transformers_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # A model that always says "7": its lm_head output gets a large bias on that one token.
    seven = tokenizer.convert_tokens_to_ids("7")
    bias = torch.zeros(model.config.vocab_size)
    bias[seven] = 1e4
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    assert answer_forced((model, tokenizer), "2+3?", "2 + 3 = 5", max_new_tokens=4) == "7777"
    items = [("2+3?", "2 + 3 = 5", "5"), ("7000+777?", "7000 + 777 = 7777", "7777"), ("1+1?", "1 + 1 = 2", "2")]
    report = teacher_accuracy(model, items, tokenizer=tokenizer, max_new_tokens=4, batch_size=2)
    assert report.predictions == ["7777", "7777", "7777"]
    assert (report.n, report.correct, report.unanswered) == (3, 1, 0)
    with pytest.raises(TypeError, match="needs an LLMBackend"):
        answer_forced(model, "q", "t")  # a bare model without its tokenizer
