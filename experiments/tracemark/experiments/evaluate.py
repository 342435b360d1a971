"""Student evaluation: held-out answer accuracy (free or answer-forced) and held-out NLL of clean traces."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tracemark.experiments.distill import IGNORE_INDEX, _pad_id, collate, encode_example, prompt_ids
from tracemark.foundation.problems import Problem
from tracemark.plugins.answers import answers_match, extract_final_answer

__all__ = [
    "FORCING_PHRASE",
    "AnswerEval",
    "answer_accuracy",
    "evaluate_answers",
    "forced_answers",
    "generate_traces",
    "heldout_nll",
]

FORCING_PHRASE = "The final answer is"
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


@dataclass
class AnswerEval:
    """Per-problem predictions and the resulting accuracy."""

    accuracy: float
    correct: list[bool] = field(default_factory=list)
    predictions: list[str | None] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list):
        ids.update(extra)
    ids.discard(None)
    return sorted(ids)


@torch.no_grad()
def _greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding, in the input order."""
    pad = _pad_id(tokenizer)
    eos = _eos_ids(tokenizer, model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[str] = [""] * len(prompts)
    device = getattr(model, "device", "cpu")
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = prompts[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                mask[row, width - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in eos), len(new))
                results[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        if was_training:
            model.train()
    return results


def generate_traces(
    model: Any,
    tokenizer: Any,
    problems: Sequence[str],
    *,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The model's greedy reasoning trace for each problem (chat prompt, reply until end of turn)."""
    prompts = [prompt_ids(tokenizer, p, system_prompt) for p in problems]
    return _greedy(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )


def forced_answers(
    model: Any,
    tokenizer: Any,
    problems: Sequence[str],
    traces: Sequence[str],
    *,
    forced_tokens: int = 10,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> list[str | None]:
    """Answer forcing: after problem + trace, append "The final answer is" and parse the first number."""
    if len(problems) != len(traces):
        raise ValueError("problems and traces differ in length")
    prompts = []
    for problem, trace in zip(problems, traces, strict=True):
        suffix = (trace.rstrip() + "\n" if trace.strip() else "") + FORCING_PHRASE
        prompts.append(
            prompt_ids(tokenizer, problem, system_prompt)
            + tokenizer(suffix, add_special_tokens=False)["input_ids"]
        )
    continuations = _greedy(model, tokenizer, prompts, max_new_tokens=forced_tokens, batch_size=batch_size)
    answers: list[str | None] = []
    for text in continuations:
        match = _NUMBER.search(text)
        answers.append(match.group(0) if match else None)
    return answers


def evaluate_answers(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    answer_forcing: bool = False,
    forced_tokens: int = 10,
    system_prompt: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnswerEval:
    """Generate a trace per problem, take its final answer (or force one) and compare with the reference."""
    if not problems:
        raise ValueError("no problems to evaluate")
    questions = [p.question for p in problems]
    outputs = generate_traces(
        model,
        tokenizer,
        questions,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        progress=progress,
    )
    if answer_forcing:
        predictions = forced_answers(
            model,
            tokenizer,
            questions,
            outputs,
            forced_tokens=forced_tokens,
            batch_size=batch_size,
            system_prompt=system_prompt,
        )
    else:
        predictions = [extract_final_answer(o) for o in outputs]
    correct = [answers_match(p.answer, pred) for p, pred in zip(problems, predictions, strict=True)]
    return AnswerEval(sum(correct) / len(correct), correct, predictions, outputs)


def answer_accuracy(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    answer_forcing: bool = False,
    system_prompt: str | None = None,
) -> float:
    """Fraction of ``problems`` whose greedy answer matches the reference (see :func:`evaluate_answers`)."""
    return evaluate_answers(
        model,
        tokenizer,
        problems,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        answer_forcing=answer_forcing,
        system_prompt=system_prompt,
    ).accuracy


@torch.no_grad()
def heldout_nll(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    system_prompt: str | None = None,
) -> float:
    """Mean per-token negative log-likelihood (nats) of the traces given their problems."""
    if not examples:
        raise ValueError("no examples to score")
    pad = _pad_id(tokenizer)
    encoded = [
        encode_example(tokenizer, p, t, max_length=max_length, system_prompt=system_prompt)
        for p, t in examples
    ]
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], pad)
            batch = {k: v.to(getattr(model, "device", "cpu")) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits[:, :-1, :].float()
            target = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(nll)
            count += int((target != IGNORE_INDEX).sum())
    finally:
        if was_training:
            model.train()
    if count == 0:
        raise ValueError("no trace tokens to score")
    return total / count if math.isfinite(total) else float("inf")
