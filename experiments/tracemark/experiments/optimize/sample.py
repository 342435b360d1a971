"""The search's inputs: the problem sample, seed instructions and the proxy student's model folder."""

from __future__ import annotations

import random
from pathlib import Path

from tracemark.experiments.optimize.records import OptimizeError, SearchConfig
from tracemark.foundation.models.embedded import ensure_embedded_model
from tracemark.foundation.problems import ProblemError, generate_problems, load_gsm8k_jsonl


def load_sample(config: SearchConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, heldout) lists of (problem, clean trace), deterministic for the config."""
    total = config.sample + config.heldout
    try:
        if config.data == "procedural":
            problems = generate_problems(total, seed=config.seed, difficulty=config.difficulty)
        else:
            problems = load_gsm8k_jsonl(config.data)
            random.Random(config.seed).shuffle(problems)
            if len(problems) < total:
                raise OptimizeError(
                    f"{config.data} has {len(problems)} problems; sample + heldout needs {total}"
                )
            problems = problems[:total]
    except ProblemError as exc:
        raise OptimizeError(str(exc)) from None
    pairs = [(p.question, p.solution) for p in problems]
    return pairs[: config.sample], pairs[config.sample :]


def read_seed_instructions(path: str | Path) -> list[str]:
    """Seed instructions: one per non-empty line; lines starting with ``#`` are comments."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptimizeError(f"cannot read the seed instructions {path} ({type(exc).__name__})") from None
    seeds = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not seeds:
        raise OptimizeError(f"{path} holds no instructions (one per line)")
    long = [s for s in seeds if len(s) > 8000]
    if long:
        raise OptimizeError(f"{path}: an instruction is longer than 8000 characters")
    return seeds


def prepare_proxy(config: SearchConfig, run_dir: Path) -> Path:
    """The proxy student's model folder: the embedded model, a tiny random model, or a given folder."""
    if config.proxy == "embedded":
        return ensure_embedded_model()
    if config.proxy == "tiny":
        from tracemark.foundation.models.tiny import build_tiny_model  # deferred: imports torch

        folder = run_dir / "proxy-tiny"
        if not (folder / "config.json").is_file():
            build_tiny_model(folder, seed=config.seed)
        return folder
    folder = Path(config.proxy)
    if not (folder / "config.json").is_file():
        raise OptimizeError(f"proxy must be embedded, tiny or a model folder; {folder} has no config.json")
    return folder
