"""Answer forcing: does the teacher still reach the right answer from a (rewritten) trace?

Give the teacher the problem and a trace and ask only for the final answer. Before/after rewriting this
measures whether a rewrite kept the trace *useful to the teacher* (the paper's teacher-accuracy check).

Two kinds of teacher are accepted:

* an :class:`~tracemark.plugins.api.LLMBackend` (anything with ``chat``): the trace is shown in the prompt
  and the reply's final answer is extracted (``\\boxed{}``, ``####`` or last number);
* a transformers model with its tokenizer (``(model, tokenizer)`` or ``tokenizer=``): the trace is placed
  in the assistant turn and the model continues "The final answer is" greedily (true answer forcing,
  batched through :func:`tracemark.experiments.evaluate.forced_answers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import beta
from tracemark.experiments.evaluate import forced_answers
from tracemark.plugins.answers import answers_match, extract_final_answer

FORCING_SYSTEM = (
    "You are given a math problem and a worked solution. Read the solution and reply with nothing but its "
    "final answer, written as \\boxed{ANSWER}."
)


@dataclass
class AccuracyReport:
    """Teacher accuracy under answer forcing, with an exact (Clopper-Pearson) 95% interval."""

    n: int
    correct: int
    unanswered: int
    accuracy: float
    ci_low: float
    ci_high: float
    predictions: list[str | None] = field(default_factory=list)


def _split_model(llm_or_model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(llm_or_model, tuple) and len(llm_or_model) == 2:
        return llm_or_model
    return llm_or_model, tokenizer


def _chat_messages(problem: str, trace: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": FORCING_SYSTEM},
        {
            "role": "user",
            "content": f"Problem:\n{problem.strip()}\n\nSolution:\n{trace.strip()}\n\nFinal answer?",
        },
    ]


def _forced_chat(llm: Any, problem: str, trace: str, max_new_tokens: int) -> str | None:
    reply = llm.chat(_chat_messages(problem, trace), max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    return extract_final_answer(reply or "")


def answer_forced(
    llm_or_model: Any,
    problem: str,
    trace: str,
    *,
    tokenizer: Any = None,
    max_new_tokens: int = 24,
) -> str | None:
    """The teacher's final answer given ``problem`` and ``trace`` (``None`` when it gives none)."""
    model, tok = _split_model(llm_or_model, tokenizer)
    if hasattr(model, "chat") and tok is None:
        return _forced_chat(model, problem, trace, max_new_tokens)
    return _forced_hf(model, tok, [problem], [trace], max_new_tokens, batch_size=1)[0]


def _forced_hf(
    model: Any,
    tokenizer: Any,
    problems: Sequence[str],
    traces: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str | None]:
    if tokenizer is None or not hasattr(model, "generate"):
        raise TypeError(
            "answer forcing needs an LLMBackend (with chat) or a transformers model with its tokenizer"
        )
    return forced_answers(
        model, tokenizer, list(problems), list(traces), forced_tokens=max_new_tokens, batch_size=batch_size
    )


def clopper_pearson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval."""
    if n == 0:
        return 0.0, 1.0
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.isf(alpha / 2, successes + 1, n - successes))
    return low, high


def teacher_accuracy(
    llm_or_model: Any,
    items: Sequence[tuple[str, str, str]],
    *,
    tokenizer: Any = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> AccuracyReport:
    """Answer-forced accuracy over ``items`` = ``(problem, trace, gold_answer)`` triples."""
    model, tok = _split_model(llm_or_model, tokenizer)
    problems = [p for p, _, _ in items]
    traces = [t for _, t, _ in items]
    if hasattr(model, "chat") and tok is None:
        done = 0

        def one(i: int) -> str | None:
            nonlocal done
            answer = _forced_chat(model, problems[i], traces[i], max_new_tokens)
            done += 1
            if progress is not None:
                progress(done, len(items))
            return answer

        with ThreadPoolExecutor(max(1, workers)) as pool:
            predictions = list(pool.map(one, range(len(items))))
    else:
        predictions = _forced_hf(model, tok, problems, traces, max_new_tokens, batch_size)
        if progress is not None:
            progress(len(items), len(items))
    correct = sum(answers_match(gold, pred) for (_, _, gold), pred in zip(items, predictions, strict=True))
    n = len(items)
    low, high = clopper_pearson(correct, n)
    return AccuracyReport(
        n=n,
        correct=correct,
        unanswered=sum(p is None for p in predictions),
        accuracy=correct / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        predictions=predictions,
    )
