"""Student distillation on a tiny random model (seconds)."""

from __future__ import annotations

import pytest
import torch
from tracemark.experiments.distill import (
    IGNORE_INDEX,
    DistillError,
    distill_student,
    encode_example,
    load_student,
    prompt_ids,
    save_student,
)
from tracemark.foundation.problems import generate_problems


@pytest.fixture(scope="module")
def examples():
    return [
        (p.question, p.solution) for p in generate_problems(24, seed=0, difficulty="easy", annotations=False)
    ]


def test_encode_masks_prompt_and_ends_turn(tiny_model_dir):
    _, tok = load_student(tiny_model_dir)
    ids, labels = encode_example(tok, "What is 2+3?", "2+3 = 5\n#### 5")
    prompt = prompt_ids(tok, "What is 2+3?")
    assert ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt)])
    completion = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(completion, skip_special_tokens=False) == "2+3 = 5\n#### 5</s>"
    short_ids, short_labels = encode_example(
        tok, "What is 2+3?", "2+3 = 5\n#### 5", max_length=len(prompt) + 3
    )
    assert len(short_ids) == len(short_labels) == len(prompt) + 3


def test_full_training_lowers_loss(tiny_model_dir, examples):
    losses = []
    model, _ = distill_student(
        tiny_model_dir,
        examples,
        method="full",
        epochs=4,
        lr=3e-3,
        batch_size=8,
        seed=1,
        progress=lambda p: losses.append(p.loss),
    )
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert not model.training


def test_lora_trains_projections_only_and_merges(tiny_model_dir, examples):
    base, _ = load_student(tiny_model_dir)
    losses = []
    model, _ = distill_student(
        tiny_model_dir,
        examples,
        method="lora",
        epochs=4,
        lr=5e-2,
        lora_r=8,
        batch_size=8,
        seed=1,
        progress=lambda p: losses.append(p.loss),
    )
    # A random tiny model's frozen embeddings cap how far LoRA can move its loss; it must still move.
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1
    assert not hasattr(model, "peft_config")  # merged into a plain model
    before, after = base.state_dict(), model.state_dict()
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("_proj.weight") for k in changed)
    assert any("mlp" in k for k in changed) and any("self_attn" in k for k in changed)


def test_deterministic_for_a_seed(tiny_model_dir, examples):
    runs = []
    for _ in range(2):
        losses = []
        model, _ = distill_student(
            tiny_model_dir,
            examples[:16],
            method="lora",
            epochs=1,
            lr=1e-2,
            batch_size=4,
            seed=5,
            progress=lambda p, losses=losses: losses.append(p.loss),
        )
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key
    other = []
    distill_student(
        tiny_model_dir,
        examples[:16],
        method="lora",
        epochs=1,
        lr=1e-2,
        batch_size=4,
        seed=6,
        progress=lambda p: other.append(p.loss),
    )
    assert other != runs[0][0]


def test_cosine_schedule_with_warmup(tiny_model_dir, examples):
    lrs = []
    distill_student(
        tiny_model_dir,
        examples,
        method="full",
        epochs=5,
        lr=1e-3,
        batch_size=4,
        warmup_ratio=0.1,
        progress=lambda p: lrs.append(p.lr),
    )
    assert len(lrs) == 30
    peak = lrs.index(max(lrs))
    assert 0 < peak <= 4 and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert lrs[-1] < 0.01 * max(lrs)


def test_threads_restored(tiny_model_dir, examples):
    before = torch.get_num_threads()
    distill_student(tiny_model_dir, examples[:4], method="full", epochs=1, batch_size=4, num_threads=1)
    assert torch.get_num_threads() == before


def test_save_and_reload(tiny_model_dir, examples, tmp_path):
    model, tok = distill_student(tiny_model_dir, examples[:8], method="lora", epochs=1, lr=1e-2, batch_size=4)
    out = save_student(model, tok, tmp_path / "student")
    again, _ = load_student(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_bad_arguments(tiny_model_dir, examples, tmp_path):
    with pytest.raises(DistillError, match="no training examples"):
        distill_student(tiny_model_dir, [])
    with pytest.raises(DistillError, match="unknown method"):
        distill_student(tiny_model_dir, examples, method="qlora")  # type: ignore[arg-type]
    with pytest.raises(DistillError, match="no config.json"):
        distill_student(tmp_path, examples)
    with pytest.raises(DistillError, match="no trace tokens"):
        distill_student(tiny_model_dir, examples[:2], max_length=10)
