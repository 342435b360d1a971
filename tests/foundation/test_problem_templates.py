"""The twenty problem templates, the ``gsm`` preset and the held-out template split."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re

import pytest
from tracemark.foundation.problem_templates import _PEOPLE, CLASSIC
from tracemark.foundation.problem_templates_extra import EXTRA, IMPLICIT_CONSTANTS
from tracemark.foundation.problems import (
    ALL_TEMPLATES,
    CLASSIC_TEMPLATES,
    HELDOUT_TEMPLATES,
    PRESETS,
    TEMPLATE_MAX_STEPS,
    TEMPLATES,
    TRAIN_TEMPLATES,
    Difficulty,
    ProblemError,
    _render,
    evaluate_expression,
    generate_problems,
    template_split,
)

_ANNOTATION = re.compile(r"(\S+) = <<([^=<>]+)=(\d+)>>(\d+)")
_INT = re.compile(r"\d+")
_NAMES = re.compile(r"\b(" + "|".join(name for name, _ in _PEOPLE) + r")\b")


def _draft(name: str, k: int, preset: str, seed: int):
    return TEMPLATES[name](random.Random(f"test:{name}:{k}:{preset}:{seed}"), k, PRESETS[preset])


def _shape(question: str, words: int | None = None) -> str:
    """The question's first sentence (or first ``words`` words) with names and numbers masked."""
    masked = _INT.sub("#", _NAMES.sub("NAME", question))
    if words is not None:
        return " ".join(masked.split()[:words])
    return masked.split(". ")[0]


def test_registry():
    assert len(TEMPLATES) >= 18 and len(EXTRA) >= 10
    # the order is part of the seed: the default set must stay these eight, in this order
    classic = ("shopping", "rates", "ages", "sharing", "savings", "travel", "garden", "family")
    assert classic == CLASSIC_TEMPLATES == tuple(CLASSIC)
    assert ALL_TEMPLATES == tuple(TEMPLATES) == CLASSIC_TEMPLATES + tuple(EXTRA)
    assert set(TEMPLATE_MAX_STEPS) == set(TEMPLATES)
    assert all(TEMPLATE_MAX_STEPS[t] == 5 for t in EXTRA)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_every_template_and_step_count_is_correct_and_grounded(name):
    for preset, k in itertools.product(PRESETS, range(1, TEMPLATE_MAX_STEPS[name] + 1)):
        questions = set()
        for seed in range(40):
            draft = _draft(name, k, preset, seed)
            assert len(draft.steps) == k, (name, k)
            solution = _render(draft, annotations=True)  # asserts every step's arithmetic
            questions.add(draft.question)
            assert draft.question.endswith("?") and "\n" not in draft.question
            assert "{" not in draft.question and "{" not in solution
            known = {int(x) for x in _INT.findall(draft.question)} | IMPLICIT_CONSTANTS
            lines = solution.split("\n")
            for line in lines[:-1]:
                visible, expr, result, shown = _ANNOTATION.search(line).groups()
                assert visible == expr and result == shown
                assert evaluate_expression(expr) == int(result) >= 0
                for operand in _INT.findall(expr):
                    assert int(operand) in known, (name, k, draft.question, solution)
                known.add(int(result))
            assert lines[-1] == f"#### {draft.answer}"
        # k = 1 has few free numbers; longer problems must hardly ever repeat
        assert len(questions) >= (20 if k == 1 else 36), (name, preset, k, len(questions))


def test_templates_do_not_share_sentence_shapes():
    shapes: dict[str, set[str]] = {}
    openings: dict[str, set[str]] = {}
    for name in ALL_TEMPLATES:
        drafts = [
            _draft(name, k, preset, seed)
            for k in range(1, TEMPLATE_MAX_STEPS[name] + 1)
            for preset in PRESETS
            for seed in range(10)
        ]
        shapes[name] = {_shape(d.question) for d in drafts}
        openings[name] = {_shape(d.question, words=3) for d in drafts}
    for a, b in itertools.combinations(ALL_TEMPLATES, 2):
        assert not shapes[a] & shapes[b], (a, b, shapes[a] & shapes[b])
        if a in EXTRA or b in EXTRA:  # the classic sharing and family both open with "NAME has #"
            assert not openings[a] & openings[b], (a, b, openings[a] & openings[b])


def test_gsm_preset_clamps_classic_templates():
    gsm = Difficulty.preset("gsm")
    assert (gsm.min_steps, gsm.max_steps) == (3, 5)
    problems = generate_problems(300, seed=4, difficulty="gsm", templates=ALL_TEMPLATES)
    assert len({p.question for p in problems}) == 300
    assert {p.template for p in problems} == set(ALL_TEMPLATES)
    for p in problems:
        assert 3 <= p.steps <= TEMPLATE_MAX_STEPS[p.template]
        assert p.solution.count("\n") == p.steps
    assert {p.steps for p in problems if p.template in EXTRA} == {3, 4, 5}
    mean_words = sum(len(p.question.split()) for p in problems) / len(problems)
    assert 25 <= mean_words <= 80


def test_default_is_the_classic_set_and_old_outputs_are_unchanged():
    def digest(problems):
        rows = [[p.question, p.solution, p.answer, p.template, p.steps] for p in problems]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    # computed from the generator before the new templates existed (commit e168ed6)
    pinned = {
        ("easy", 0): "17d98c5d54bcc06d",
        ("easy", 1000): "5d16587a619eafca",
        ("medium", 0): "47293b49d6eb7192",
        ("medium", 1000): "be3e2e77ebbcee36",
        ("hard", 0): "1f9971687d29d813",
        ("hard", 1000): "2d90e9f1e3745945",
    }
    for (preset, seed), expected in pinned.items():
        assert digest(generate_problems(120, seed=seed, difficulty=preset)) == expected, (preset, seed)
    plain = generate_problems(
        50, seed=7, difficulty="medium", templates=["shopping", "ages"], annotations=False
    )
    assert digest(plain) == "82cb0394295cb336"
    hard = generate_problems(50, seed=5, difficulty="hard", templates=["garden", "family", "travel"])
    assert digest(hard) == "07df64663063537f"
    assert {p.template for p in generate_problems(200, seed=0)} == set(CLASSIC_TEMPLATES)


def test_template_split():
    train, test = template_split(ALL_TEMPLATES, 7, seed=3)
    assert len(test) == 7 and len(train) == len(ALL_TEMPLATES) - 7
    assert not set(train) & set(test) and set(train) | set(test) == set(ALL_TEMPLATES)
    assert template_split(ALL_TEMPLATES, 7, seed=3) == (train, test)
    reordered = template_split(list(reversed(ALL_TEMPLATES)), 7, seed=3)
    assert set(reordered[1]) == set(test)
    assert {tuple(template_split(ALL_TEMPLATES, 7, seed=s)[1]) for s in range(10)} != {tuple(test)}
    assert train == [t for t in ALL_TEMPLATES if t in train]  # order of the input kept
    with pytest.raises(ProblemError, match="n_heldout"):
        template_split(ALL_TEMPLATES, 0, seed=0)
    with pytest.raises(ProblemError, match="n_heldout"):
        template_split(["ages", "travel"], 2, seed=0)
    with pytest.raises(ProblemError, match="duplicate"):
        template_split(["ages", "ages", "travel"], 1, seed=0)
    with pytest.raises(ProblemError, match="unknown"):
        template_split(["ages", "poetry"], 1, seed=0)


def test_default_heldout_split():
    assert set(HELDOUT_TEMPLATES) <= set(ALL_TEMPLATES)
    assert set(TRAIN_TEMPLATES) | set(HELDOUT_TEMPLATES) == set(ALL_TEMPLATES)
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    assert abs(len(HELDOUT_TEMPLATES) - len(ALL_TEMPLATES) / 3) < 1
    assert set(HELDOUT_TEMPLATES) & set(CLASSIC) and set(HELDOUT_TEMPLATES) & set(EXTRA)
    train = generate_problems(200, seed=1, difficulty="gsm", templates=TRAIN_TEMPLATES)
    test = generate_problems(100, seed=2, difficulty="gsm", templates=HELDOUT_TEMPLATES)
    assert not {p.template for p in train} & {p.template for p in test}
    train_shapes = {_shape(p.question) for p in train}
    assert not any(_shape(p.question) in train_shapes for p in test)


def test_step_limits():
    Difficulty(5, 5)
    with pytest.raises(ProblemError, match="max_steps <= 5"):
        Difficulty(1, 6)
    five = Difficulty(5, 5)
    assert {p.steps for p in generate_problems(20, seed=0, difficulty=five, templates=list(EXTRA))} == {5}
    with pytest.raises(ProblemError, match="fewer than min_steps=5"):
        generate_problems(5, seed=0, difficulty=five, templates=["discount", "ages"])
    with pytest.raises(ProblemError, match="fewer than min_steps=5"):
        generate_problems(5, seed=0, difficulty=five)
