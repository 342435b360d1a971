"""Install a run's best instruction where the ``optimized`` rewriter looks for it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tracemark.experiments.optimize.folder import RunFolder, atomic_write
from tracemark.experiments.optimize.records import CandidateResult, OptimizeError, best_of
from tracemark.plugins.builtin.optimized import installed_instruction_path


def install_instruction(
    run_dir: str | Path, target: str | Path | None = None, *, min_improvement: float = 0.0
) -> tuple[Path, CandidateResult]:
    """Write the best instruction of ``run_dir`` where the ``optimized`` rewriter looks for it.

    A candidate other than the built-in instruction is installed only when its score is at least
    ``min_improvement`` (a fraction) below the built-in's: small differences on a small sample are noise.
    """
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise OptimizeError(f"no such run folder: {folder.path}")
    if not folder.results_file.is_file():
        raise OptimizeError(f"{folder.path} has no results.jsonl (not a `tracemark optimize run` folder?)")
    best = best_of(folder.results())
    if best is None:
        raise OptimizeError(f"{folder.path} has no qualified candidate to install (all were disqualified)")
    builtin = [r for r in folder.results() if r.origin == "built-in" and r.score is not None]
    if builtin and best.origin != "built-in" and best.score is not None:
        threshold = builtin[0].score * (1.0 - min_improvement)
        if best.score > threshold:
            improvement = 1.0 - best.score / builtin[0].score if builtin[0].score else 0.0
            raise OptimizeError(
                f"the best candidate ({best.sha[:12]}) lowers the proxy's gain by {improvement:.1%} against "
                f"the built-in instruction, less than the required {min_improvement:.0%}; nothing installed"
            )
    path = Path(target) if target is not None else installed_instruction_path()
    try:
        config = json.loads(folder.config_file.read_text(encoding="utf-8")).get("config", {})
    except (OSError, json.JSONDecodeError):
        config = {}
    payload = {
        "instruction": best.instruction,
        "sha": best.sha,
        "score": best.score,
        "gain": best.gain,
        "relative_gain": best.relative_gain,
        "preservation": best.preservation,
        "round": best.round,
        "run": str(folder.path.resolve()),
        "config": config,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise OptimizeError(f"cannot write {path} ({type(exc).__name__}: {exc.strerror or exc})") from None
    return path, best
