"""The procedural problem generator and the GSM8K loader."""

from __future__ import annotations

import json
import re

import pytest
from tracemark.foundation.problems import (
    TEMPLATES,
    Difficulty,
    ProblemError,
    evaluate_expression,
    generate_problems,
    load_gsm8k_jsonl,
    split_problems,
)
from tracemark.plugins.answers import answers_match, extract_final_answer

_ANNOTATION = re.compile(r"(\S+) = <<([^=<>]+)=(\d+)>>(\d+)")
_INT = re.compile(r"\d+")


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_solutions_are_correct_and_grounded(difficulty):
    problems = generate_problems(400, seed=3, difficulty=difficulty)
    preset = Difficulty.preset(difficulty)
    for p in problems:
        lines = p.solution.split("\n")
        assert lines[-1] == f"#### {p.answer}"
        assert extract_final_answer(p.solution) == p.answer
        assert answers_match(p.answer, extract_final_answer(p.solution))
        known = {int(x) for x in _INT.findall(p.question)}
        known |= {v for word, v in (("twice", 2), ("three times", 3)) if word in p.question}
        results = []
        for line in lines[:-1]:
            match = _ANNOTATION.search(line)
            assert match, line
            visible, expr, result, shown = match.groups()
            assert visible == expr and result == shown
            assert evaluate_expression(expr) == int(result)
            # every operand was given in the question or computed in an earlier step
            for operand in _INT.findall(expr):
                assert int(operand) in known, (p.question, p.solution)
            known.add(int(result))
            results.append(int(result))
        assert results[-1] == int(p.answer) >= 0
        assert preset.min_steps <= p.steps == len(results) <= preset.max_steps
        assert p.template in TEMPLATES


def test_deterministic_prefix_stable_and_distinct():
    a = generate_problems(60, seed=11, difficulty="medium")
    b = generate_problems(60, seed=11, difficulty="medium")
    assert a == b
    assert generate_problems(20, seed=11, difficulty="medium") == a[:20]
    assert generate_problems(60, seed=12, difficulty="medium") != a
    assert len({p.question for p in a}) == len(a)
    assert len({p.template for p in a}) >= 5


def test_annotations_off_and_template_filter():
    plain = generate_problems(
        30, seed=1, difficulty="easy", annotations=False, templates=["shopping", "ages"]
    )
    assert all("<<" not in p.solution for p in plain)
    assert {p.template for p in plain} <= {"shopping", "ages"}
    annotated = generate_problems(30, seed=1, difficulty="easy", templates=["shopping", "ages"])
    assert [p.answer for p in plain] == [p.answer for p in annotated]


def test_difficulty_scales_numbers():
    easy = generate_problems(200, seed=0, difficulty="easy")
    hard = generate_problems(200, seed=0, difficulty="hard")
    mean = lambda ps: sum(int(p.answer) for p in ps) / len(ps)  # noqa: E731
    assert mean(hard) > 3 * mean(easy)
    assert max(p.steps for p in easy) <= 2 and min(p.steps for p in hard) >= 3


def test_bad_arguments():
    with pytest.raises(ProblemError, match="unknown difficulty"):
        generate_problems(1, seed=0, difficulty="brutal")
    with pytest.raises(ProblemError, match="unknown templates"):
        generate_problems(1, seed=0, templates=["poetry"])
    with pytest.raises(ProblemError):
        Difficulty(min_steps=3, max_steps=2)
    with pytest.raises(ProblemError):
        generate_problems(-1, seed=0)
    with pytest.raises(ProblemError, match="distinct"):
        tiny = Difficulty(1, 1, small=(2, 2), price=(2, 2), big=(10, 10), speed=(10, 10))
        generate_problems(500, seed=0, difficulty=tiny, templates=["garden"])
    with pytest.raises(ProblemError):
        evaluate_expression("__import__('os')")


def test_split():
    problems = generate_problems(10, seed=0)
    train, test = split_problems(problems, 3)
    assert train + test == problems and len(test) == 3
    with pytest.raises(ProblemError):
        split_problems(problems, 11)


def test_load_gsm8k_jsonl(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": "Q1?", "answer": "It is 2*3 = <<2*3=6>>6.\n#### 6"},
        {"question": "Q2?", "answer": "Big.\n#### 1,234"},
        {"question": "Q3?", "answer": "#### 7"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    problems = load_gsm8k_jsonl(path)
    assert [p.answer for p in problems] == ["6", "1234", "7"]
    assert problems[0].solution.endswith("#### 6") and problems[0].question == "Q1?"
    assert len(load_gsm8k_jsonl(path, n=2)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": "no final line"}\n', encoding="utf-8")
    with pytest.raises(ProblemError, match="bad.jsonl:1"):
        load_gsm8k_jsonl(bad)
    with pytest.raises(ProblemError, match="no such file"):
        load_gsm8k_jsonl(tmp_path / "missing.jsonl")
