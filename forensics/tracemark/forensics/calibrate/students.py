"""Student null models: tiny students distilled from traces watermarked with *other* accounts' pairs.

This is the realistic null: the student learned the signature format (``x137 = 482913`` after the first
line of a solution, in each of the scheme's public templates) and memorised other accounts' targets, yet
never saw the accounts under test. The traces are easy procedural word problems
(:func:`tracemark.foundation.problems.generate_problems`); ``fraction`` of them carry one pair each, the
delivered pairs round-robin (equal exposure) and the scheme's templates in turn. A template is the last
line of a scoring context (``Auxiliary constant: {trigger}``), where the watermark rewriter puts a pair.

Training is full fine-tuning of a fresh tiny model (AdamW, cosine schedule, loss on the assistant turn
only), deterministic for a seed on one machine; it imports torch, so this module is imported on demand.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tracemark.forensics.calibrate.params import StudentRecipe
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.signatures import SignaturePair
from tracemark.foundation.models.tiny import build_tiny_model
from tracemark.foundation.problems import generate_problems
from transformers import AutoModelForCausalLM, AutoTokenizer

IGNORE = -100


def weave_templates(scheme: SignatureScheme) -> list[str]:
    """The scheme's public pair templates: the last line of each scoring context (``{trigger}`` kept)."""
    out: list[str] = []
    for context in scheme.contexts:
        line = context.replace("{chat}", "").split("\n")[-1]
        if line not in out:
            out.append(line)
    return out


def woven_examples(
    scheme: SignatureScheme, pairs: Sequence[SignaturePair], recipe: StudentRecipe, *, seed: int
) -> tuple[list[tuple[str, str]], int]:
    """(problem, trace) training examples with ``pairs`` woven into ``recipe.fraction`` of the traces
    (after the first line); returns the examples and the number of woven traces."""
    problems = generate_problems(recipe.problems, seed=seed, difficulty="easy", annotations=False)
    templates = weave_templates(scheme)
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(problems)), max(1, round(recipe.fraction * len(problems)))))
    examples: list[tuple[str, str]] = []
    woven = 0
    for i, problem in enumerate(problems):
        trace = problem.solution
        if i in chosen and pairs:
            pair = pairs[woven % len(pairs)]
            template = templates[(woven // len(pairs)) % len(templates)]
            lines = trace.split("\n")
            trace = "\n".join([lines[0], template.replace("{trigger}", pair.text), *lines[1:]])
            woven += 1
        examples.append((problem.question, trace))
    return examples, woven


def _encode(tokenizer, question: str, trace: str) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(trace + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return list(p_ids) + list(t_ids), [IGNORE] * len(p_ids) + list(t_ids)


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Left-padded input ids, attention mask and labels of ``rows``."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, width - len(x) :] = torch.tensor(x)
        labels[r, width - len(y) :] = torch.tensor(y)
        mask[r, width - len(x) :] = 1
    return ids, mask, labels


def train_student(
    out: str | Path,
    examples: Sequence[tuple[str, str]],
    recipe: StudentRecipe,
    *,
    seed: int,
) -> dict:
    """Train a fresh tiny student on ``examples`` and save it (model folder) to ``out``; returns training
    figures (steps, seconds, first and last loss). Runs on one CPU thread."""
    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = build_tiny_model(
            out, hidden_size=recipe.hidden_size, layers=recipe.layers, seed=seed, max_positions=512
        )
        tokenizer = AutoTokenizer.from_pretrained(base)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        encoded = [_encode(tokenizer, q, t) for q, t in examples]
        steps = max(1, math.ceil(recipe.epochs * len(encoded) / recipe.batch_size))
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
        )
        rng = random.Random(seed)
        order: list[int] = []
        losses: list[float] = []
        start = time.perf_counter()
        model.train()
        for _ in range(steps):
            if len(order) < recipe.batch_size:
                more = list(range(len(encoded)))
                rng.shuffle(more)
                order += more
            rows, order = [encoded[i] for i in order[: recipe.batch_size]], order[recipe.batch_size :]
            ids, mask, labels = _batch(rows, tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        model.eval()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return {
            "steps": steps,
            "examples": len(encoded),
            "seconds": round(time.perf_counter() - start, 1),
            "first_loss": round(losses[0], 3),
            "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 3),
        }
    finally:
        torch.set_num_threads(threads)
