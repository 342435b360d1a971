"""What every stage of ``tracemark bench distill`` shares: the results folder and its files, the
problem split, model folders and chat backends (see :mod:`tracemark.experiments.distill_bench`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tracemark.experiments.distill_config import BenchConfig, BenchConfigError
from tracemark.foundation.models.embedded import ensure_embedded_model
from tracemark.foundation.models.tiny import build_tiny_model
from tracemark.foundation.problems import (
    CLASSIC_TEMPLATES,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    Problem,
    generate_problems,
    load_gsm8k_jsonl,
)
from tracemark.server.config import TeacherSection
from tracemark.server.teacher.factory import build_teacher

__all__ = [
    "BenchPaths",
    "chat_backend",
    "load_problems",
    "read_trace_set",
    "resolve_model",
    "write_json",
    "write_trace_set",
]


class BenchPaths:
    """Where each stage's output lives inside the results folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.traces = root / "traces"
        self.students = root / "students"
        self.models = root / "models"
        self.watermark = root / "watermark"
        self.plots = root / "plots"

    def make(self) -> None:
        for folder in (self.traces, self.students, self.models, self.watermark, self.plots):
            folder.mkdir(parents=True, exist_ok=True)

    def trace_set(self, name: str, seed: int | None = None) -> Path:
        """``traces/<name>-s<seed>.jsonl`` (``seed=None``: a set shared by every seed)."""
        return self.traces / (f"{name}.jsonl" if seed is None else f"{name}-s{seed}.jsonl")

    def student(self, name: str, seed: int | None = None) -> Path:
        """``students/<name>-s<seed>.json`` (``seed=None``: the untrained ``base``)."""
        return self.students / (f"{name}.json" if seed is None else f"{name}-s{seed}.json")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(path)  # atomic: a killed run never leaves half a stage file


def write_trace_set(path: Path, rows: list[dict], meta: dict) -> None:
    """Write a trace-set file (a ``meta`` line, then one row per line), atomically."""
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_trace_set(path: Path) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of a trace-set file; rows have ``question``, ``trace``, ``answer``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0])["meta"], [json.loads(line) for line in lines[1:] if line.strip()]


# -- problems and models ----------------------------------------------------------------------------


def _gsm8k_lines(path: str, start: int, end: int) -> list[Problem]:
    """Problems on the non-empty lines ``[start, end)`` of a GSM8K-style JSONL (0-based line numbers)."""
    problems = load_gsm8k_jsonl(path, n=end)
    if len(problems) < end:
        raise BenchConfigError(f"{path} has {len(problems)} problems, the config reads lines up to {end}")
    return problems[start:end]


def load_problems(config: BenchConfig, seed: int) -> tuple[list[Problem], list[Problem]]:
    """``(train, test)`` for one seed. The held-out test set is the same for every seed; the training
    problems are drawn per seed. Generated problems: with ``templates = 'heldout'`` training uses
    :data:`~tracemark.foundation.problems.TRAIN_TEMPLATES` and the test set
    :data:`~tracemark.foundation.problems.HELDOUT_TEMPLATES`, so no test problem has a training template.
    GSM8K: test = the first ``test`` problems of ``test_lines``; train = a seeded sample of ``train_lines``
    (the official test split is never read)."""
    p = config.problems
    if p.source == "gsm8k":
        test = _gsm8k_lines(p.path, *p.test_lines)[: p.test]
        pool = _gsm8k_lines(p.path, *p.train_lines)
        return random.Random(seed).sample(pool, p.train), test
    if p.templates == "heldout":
        train_t, test_t = TRAIN_TEMPLATES, HELDOUT_TEMPLATES
    else:
        train_t = test_t = CLASSIC_TEMPLATES
    test = generate_problems(
        p.test, seed=99_991, difficulty=p.difficulty, templates=test_t, annotations=False
    )
    seen = {q.question for q in test}
    train = [
        q
        for q in generate_problems(
            p.train + p.test, seed=1000 + seed, difficulty=p.difficulty, templates=train_t, annotations=False
        )
        if q.question not in seen
    ][: p.train]
    return train, test


def resolve_model(name: str, *, workdir: Path, seed: int = 0) -> Path:
    """'embedded' → the embedded SmolLM2 folder; 'tiny' → a fresh random tiny model; else a folder."""
    if name == "embedded":
        return ensure_embedded_model()
    if name == "tiny":
        target = workdir / f"tiny-base-{seed}"
        if not (target / "config.json").exists():
            build_tiny_model(target, hidden_size=64, layers=2, heads=4, seed=seed)
        return target
    path = Path(name).expanduser()
    if not path.exists():
        raise BenchConfigError(f"model folder not found: {path}")
    return path


def chat_backend(kind: str, model: str, endpoint: str, key_env: str, max_batch: int = 8) -> Any:
    """A teacher backend (openai | embedded | transformers) used as a chat model."""
    if kind == "openai":
        section = TeacherSection(backend="openai", model=model, endpoint=endpoint, api_key_env=key_env)
    elif kind == "embedded":
        section = TeacherSection(
            backend="embedded", quantization="none", device="cpu", max_batch_size=max_batch
        )
    else:
        section = TeacherSection(
            backend="transformers", model=model, quantization="none", device="auto", max_batch_size=max_batch
        )
    return build_teacher(section)
