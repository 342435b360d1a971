"""Seeded generator of GSM8K-style arithmetic word problems, and a GSM8K JSONL loader.

Every generated problem comes with a reference solution in GSM8K format: one narrative line per
arithmetic step, each calculation written ``a*b = <<a*b=c>>c`` (annotations optional) and a final line
``#### N``. All intermediate results and the answer are non-negative integers; divisions are exact.
Each step's expression is re-evaluated when the problem is built, so a reference solution is never wrong.

Difficulty controls the number of steps and the size of the numbers (presets ``easy``, ``medium``,
``hard``, ``gsm``, or a :class:`Difficulty` of your own).

There are 20 scenario templates (:data:`TEMPLATES`, defined in :mod:`tracemark.foundation.problem_templates`
and :mod:`tracemark.foundation.problem_templates_extra`). :func:`generate_problems` draws from the classic
eight by default, so a seed gives the same problems it always did; a benchmark that must measure
reasoning rather than format trains on some templates and tests on others (:data:`HELDOUT_TEMPLATES`,
:func:`template_split`).
"""

from __future__ import annotations

import ast
import json
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tracemark.foundation.problem_templates import CLASSIC, Template, _cap, _Draft
from tracemark.foundation.problem_templates_extra import EXTRA

__all__ = [
    "ALL_TEMPLATES",
    "CLASSIC_TEMPLATES",
    "Difficulty",
    "HELDOUT_TEMPLATES",
    "Problem",
    "ProblemError",
    "TEMPLATES",
    "TEMPLATE_MAX_STEPS",
    "TRAIN_TEMPLATES",
    "generate_problems",
    "load_gsm8k_jsonl",
    "split_problems",
    "template_split",
]


class ProblemError(ValueError):
    """Bad arguments to the generator or a malformed problem file."""


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, a reference solution (GSM8K format) and the final answer."""

    question: str
    solution: str
    answer: str
    template: str = ""
    steps: int = 0


MAX_STEPS = 5


@dataclass(frozen=True)
class Difficulty:
    """Number of arithmetic steps and number ranges (inclusive) used by the templates."""

    min_steps: int = 2
    max_steps: int = 3
    small: tuple[int, int] = (2, 12)  # counts (items, hours, friends, rows)
    price: tuple[int, int] = (2, 20)  # unit prices, per-unit amounts
    big: tuple[int, int] = (10, 100)  # ages, extra amounts
    speed: tuple[int, int] = (20, 90)  # km per hour

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= MAX_STEPS:
            raise ProblemError(
                f"steps must satisfy 1 <= min_steps <= max_steps <= {MAX_STEPS},"
                f" got {self.min_steps}..{self.max_steps}"
            )
        for name in ("small", "price", "big", "speed"):
            lo, hi = getattr(self, name)
            if not 2 <= lo <= hi:
                raise ProblemError(f"range {name}={lo}..{hi} must satisfy 2 <= lo <= hi")

    @classmethod
    def preset(cls, name: str) -> Difficulty:
        """The named preset: ``easy`` (1-2 steps, one-digit numbers), ``medium`` (2-3), ``hard`` (3-4),
        ``gsm`` (3-5 steps, numbers of GSM8K's size)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ProblemError(f"unknown difficulty {name!r}; choose one of {sorted(PRESETS)}") from None

    def key(self) -> str:
        return f"{self.min_steps}-{self.max_steps}:{self.small}:{self.price}:{self.big}:{self.speed}"


PRESETS: dict[str, Difficulty] = {
    "easy": Difficulty(1, 2, small=(2, 9), price=(2, 9), big=(10, 40), speed=(10, 60)),
    "medium": Difficulty(2, 3, small=(2, 12), price=(2, 20), big=(10, 100), speed=(20, 90)),
    "hard": Difficulty(3, 4, small=(3, 20), price=(5, 50), big=(20, 300), speed=(30, 120)),
    "gsm": Difficulty(3, 5, small=(2, 15), price=(3, 40), big=(12, 200), speed=(30, 100)),
}

# --- safe evaluation of the step expressions -------------------------------------------------------

_OPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate_expression(expr: str) -> Fraction:
    """Exact value of an arithmetic expression with integers and ``+ - * /`` (no names, no calls)."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ProblemError(f"unsupported expression {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


# --- templates ------------------------------------------------------------------------------------

#: every template by name: the classic eight first, then the twelve of :mod:`problem_templates_extra`
TEMPLATES: dict[str, Template] = {**CLASSIC, **EXTRA}
ALL_TEMPLATES: tuple[str, ...] = tuple(TEMPLATES)
#: the default template set of :func:`generate_problems` (kept so that old seeds give the same problems)
CLASSIC_TEMPLATES: tuple[str, ...] = tuple(CLASSIC)
#: the largest step count each template supports; a larger draw is clamped to it
TEMPLATE_MAX_STEPS: dict[str, int] = {name: 4 for name in CLASSIC} | {name: 5 for name in EXTRA}
#: the documented held-out split: test problems come from these templates only, training problems from
#: the others (7 of 20: two classic, five new; every reasoning kind in it also differs in wording)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "ages",
    "travel",
    "discount",
    "bake_sale",
    "average",
    "field_trip",
    "temperature",
)
TRAIN_TEMPLATES: tuple[str, ...] = tuple(t for t in ALL_TEMPLATES if t not in HELDOUT_TEMPLATES)


def _render(draft: _Draft, annotations: bool) -> str:
    lines = []
    for sentence, expr, result in draft.steps:
        value = evaluate_expression(expr)
        if value != result or value.denominator != 1 or result < 0:
            raise AssertionError(f"template produced a wrong step: {expr} != {result}")
        calc = f"{expr} = <<{expr}={result}>>{result}" if annotations else f"{expr} = {result}"
        lines.append(_cap(sentence.replace("{c}", calc)))
    if draft.steps[-1][2] != draft.answer:
        raise AssertionError("the last step does not give the answer")
    lines.append(f"#### {draft.answer}")
    return "\n".join(lines)


def generate_problems(
    n: int,
    *,
    seed: int,
    difficulty: str | Difficulty = "medium",
    templates: Sequence[str] | None = None,
    annotations: bool = True,
) -> list[Problem]:
    """``n`` distinct word problems, deterministic for ``seed`` (a larger ``n`` extends a smaller one).

    ``difficulty`` is a preset name or a :class:`Difficulty`; ``templates`` restricts the scenario kinds
    (default: :data:`CLASSIC_TEMPLATES`, the original eight; pass :data:`ALL_TEMPLATES` for all of them);
    a step count above a template's :data:`TEMPLATE_MAX_STEPS` is clamped to it. ``annotations`` writes
    GSM8K ``<<a*b=c>>`` calculator marks. For disjoint train and test sets, generate once and split
    (:func:`split_problems`), or generate from disjoint template sets (:func:`template_split`).
    """
    if n < 0:
        raise ProblemError(f"n must be >= 0, got {n}")
    diff = Difficulty.preset(difficulty) if isinstance(difficulty, str) else difficulty
    names = list(templates) if templates is not None else list(CLASSIC_TEMPLATES)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown or not names:
        raise ProblemError(f"unknown templates {unknown}; choose from {sorted(TEMPLATES)}")
    short = sorted({t for t in names if TEMPLATE_MAX_STEPS[t] < diff.min_steps})
    if short:
        raise ProblemError(f"templates {short} support fewer than min_steps={diff.min_steps} steps")
    problems: list[Problem] = []
    seen: set[str] = set()
    i = 0
    max_tries = 50 * n + 1000
    while len(problems) < n:
        if i >= max_tries:
            raise ProblemError(f"could only generate {len(problems)} distinct problems out of {n}")
        rng = random.Random(f"tracemark.foundation.problems:{seed}:{diff.key()}:{','.join(names)}:{i}")
        i += 1
        template = rng.choice(names)
        steps = min(rng.randint(diff.min_steps, diff.max_steps), TEMPLATE_MAX_STEPS[template])
        draft = TEMPLATES[template](rng, steps, diff)
        if draft.question in seen:
            continue
        seen.add(draft.question)
        problems.append(
            Problem(
                draft.question, _render(draft, annotations), str(draft.answer), template, len(draft.steps)
            )
        )
    return problems


def split_problems(problems: Sequence[Problem], n_test: int) -> tuple[list[Problem], list[Problem]]:
    """(train, test) with the last ``n_test`` problems as the test set."""
    if not 0 <= n_test <= len(problems):
        raise ProblemError(f"n_test={n_test} out of range for {len(problems)} problems")
    cut = len(problems) - n_test
    return list(problems[:cut]), list(problems[cut:])


def template_split(names: Sequence[str], n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(train templates, test templates): ``n_heldout`` of ``names`` drawn for the test side by ``seed``.

    Deterministic for the same set of names and seed (their order does not matter); both lists keep the
    order of ``names``. The documented default split is :data:`TRAIN_TEMPLATES` / :data:`HELDOUT_TEMPLATES`.
    """
    names = list(names)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown:
        raise ProblemError(f"unknown templates {unknown}; choose from {sorted(TEMPLATES)}")
    if len(set(names)) != len(names):
        raise ProblemError(f"duplicate template names in {names}")
    if not 0 < n_heldout < len(names):
        raise ProblemError(f"n_heldout={n_heldout} must leave both sides non-empty ({len(names)} templates)")
    held = set(random.Random(f"tracemark.foundation.problems.split:{seed}").sample(sorted(names), n_heldout))
    return [t for t in names if t not in held], [t for t in names if t in held]


def load_gsm8k_jsonl(path: str | Path, n: int | None = None) -> list[Problem]:
    """Problems from a GSM8K-style JSONL file (fields ``question`` and ``answer``, answer after ``####``)."""
    path = Path(path)
    if not path.is_file():
        raise ProblemError(f"no such file: {path}")
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if n is not None and len(problems) >= n:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, solution = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ProblemError(
                    f"{path}:{lineno}: not a GSM8K record ({exc.__class__.__name__})"
                ) from None
            if not isinstance(question, str) or not isinstance(solution, str) or "####" not in solution:
                raise ProblemError(f"{path}:{lineno}: the answer field has no '#### N' final line")
            final = solution.rsplit("####", 1)[1].strip().replace(",", "")
            problems.append(Problem(question.strip(), solution.strip(), final, "gsm8k", 0))
    return problems
