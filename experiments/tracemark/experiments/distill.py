"""Distil a student on (problem, trace) pairs: supervised fine-tuning, LoRA (peft) or full.

Each example becomes a chat: the problem is the user turn, the trace the assistant turn. The loss covers
only the assistant turn (the trace and the end-of-turn marker), never the prompt. Training is
deterministic for a seed on one machine (shuffling, LoRA initialisation; no dropout by default).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.models.device import DeviceError, resolve_device

__all__ = [
    "DistillError",
    "DistillProgress",
    "LORA_TARGET_MODULES",
    "encode_example",
    "distill_student",
    "load_student",
    "prompt_ids",
    "save_student",
]

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE_INDEX = -100


class DistillError(InvalidInput):
    """Bad arguments to the distillation (empty data, unknown method, unusable model)."""


@dataclass(frozen=True)
class DistillProgress:
    """One optimiser step's report to the ``progress`` callback."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    tokens: int
    elapsed_s: float


def _messages(problem: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": problem})
    return messages


def _chat_text(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    # No template: a plain fallback so base (non-chat) models still work.
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    if kwargs.get("add_generation_prompt"):
        text += "assistant: "
    return text


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer: Any, problem: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the chat prompt for ``problem``, ending where the assistant's reply starts."""
    return _ids(
        tokenizer, _chat_text(tokenizer, _messages(problem, system_prompt), add_generation_prompt=True)
    )


def encode_example(
    tokenizer: Any,
    problem: str,
    trace: str,
    *,
    max_length: int | None = None,
    system_prompt: str | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one chat example; labels are -100 on the prompt.

    The completion is the trace followed by the template's end-of-turn marker (so the student learns to
    stop). Sequences longer than ``max_length`` are cut at the end.
    """
    messages = _messages(problem, system_prompt)
    prompt_text = _chat_text(tokenizer, messages, add_generation_prompt=True)
    if getattr(tokenizer, "chat_template", None):
        full = _chat_text(tokenizer, [*messages, {"role": "assistant", "content": trace}])
        if full.startswith(prompt_text):
            completion = full[len(prompt_text) :].rstrip()
        else:  # templates that rewrite earlier turns: fall back to trace + eos
            completion = trace + (tokenizer.eos_token or "")
    else:
        completion = trace + (tokenizer.eos_token or "")
    p_ids = _ids(tokenizer, prompt_text)
    c_ids = _ids(tokenizer, completion)
    input_ids = p_ids + c_ids
    labels = [IGNORE_INDEX] * len(p_ids) + c_ids
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors (input_ids, attention_mask, labels) for training or scoring."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    if n < 1:
        raise DistillError(f"num_threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DistillError("the tokenizer has neither a pad nor an eos token")
    return pad


def load_student(base_model: str | Path, *, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from a model folder, fp32, on ``device`` ('cpu', 'cuda', 'auto'), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(base_model)
    if not (path / "config.json").is_file():
        raise DistillError(f"not a model folder (no config.json): {path}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        device = resolve_device(device, what="student")
    except DeviceError as exc:  # unknown device, or CUDA asked for where there is none
        raise DistillError(str(exc)) from None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.eval()
    return model, tokenizer


def distill_student(
    base_model: str | Path,
    examples: Sequence[tuple[str, str]],
    *,
    method: Literal["lora", "full"] = "lora",
    epochs: float = 3,
    lr: float = 5e-4,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    system_prompt: str | None = None,
    num_threads: int | None = None,
    merge: bool = True,
    device: str = "cpu",
    progress: Callable[[DistillProgress], None] | None = None,
) -> tuple[Any, Any]:
    """Fine-tune a student from ``base_model`` on ``(problem, trace)`` pairs; return (model, tokenizer).

    ``method="lora"`` trains rank-``lora_r`` adapters on the attention and MLP projections (merged into
    the weights when ``merge``), ``"full"`` trains every weight. AdamW with a cosine schedule after a
    linear warmup over ``warmup_ratio`` of the steps; ``epochs`` may be fractional. The current
    ``torch.get_num_threads()`` is used unless ``num_threads`` is given; ``device`` as in
    :func:`load_student`.
    """
    if method not in ("lora", "full"):
        raise DistillError(f"unknown method {method!r}; use 'lora' or 'full'")
    if not examples:
        raise DistillError("no training examples")
    if epochs <= 0 or lr <= 0 or batch_size < 1 or max_length < 8:
        raise DistillError("epochs and lr must be > 0, batch_size >= 1, max_length >= 8")
    with _threads(num_threads):
        torch.manual_seed(seed)
        model, tokenizer = load_student(base_model, device=device)
        pad_id = _pad_id(tokenizer)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            targets = [t for t in LORA_TARGET_MODULES if t in names]
            if not targets:
                raise DistillError("the model has none of the LoRA target projections")
            config = LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
                bias="none",
            )
            torch.manual_seed(seed)
            model = get_peft_model(model, config)
        encoded = [
            encode_example(tokenizer, p, t, max_length=max_length, system_prompt=system_prompt)
            for p, t in examples
        ]
        if all(all(label == IGNORE_INDEX for label in labs) for _, labs in encoded):
            raise DistillError(f"max_length={max_length} leaves no trace tokens to train on")
        steps_per_epoch = math.ceil(len(encoded) / batch_size)
        total_steps = max(1, math.ceil(epochs * steps_per_epoch))
        warmup = min(total_steps - 1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            frac = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * frac))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        order_rng = random.Random(seed)
        model.train()
        start = time.perf_counter()
        step = 0
        epoch = 0
        while step < total_steps:
            order = list(range(len(encoded)))
            order_rng.shuffle(order)
            for b in range(0, len(order), batch_size):
                if step >= total_steps:
                    break
                batch = collate([encoded[i] for i in order[b : b + batch_size]], pad_id)
                batch = {k: v.to(model.device) for k, v in batch.items()}
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                logits = out.logits[:, :-1, :].float()
                target = batch["labels"][:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                current_lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                if progress is not None:
                    progress(
                        DistillProgress(
                            step,
                            total_steps,
                            epoch,
                            float(loss.detach()),
                            current_lr,
                            int(batch["attention_mask"].sum()),
                            time.perf_counter() - start,
                        )
                    )
            epoch += 1
        model.eval()
        if method == "lora" and merge:
            model = model.merge_and_unload()
    return model, tokenizer


def save_student(model: Any, tokenizer: Any, directory: str | Path) -> Path:
    """Save a student (merged LoRA or full) and its tokenizer as a regular model folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
