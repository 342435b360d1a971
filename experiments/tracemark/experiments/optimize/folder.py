"""The run folder of one search: config, reference, proposals and results logs, state summary."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tracemark.experiments.optimize.records import (
    CandidateResult,
    ConfigMismatch,
    OptimizeError,
    SearchConfig,
    best_of,
)

LAYOUT_VERSION = 1


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a crash leaves the old file or the new, never half)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only log; a torn last line (crash mid-write) is dropped and cut off."""
    if not path.exists():
        return []
    raw = path.read_text(encoding="utf-8")
    records: list[dict[str, Any]] = []
    good_end = 0
    offset = 0
    for line in raw.splitlines(keepends=True):
        offset += len(line)
        if not line.strip():
            good_end = offset
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            if offset == len(raw) and not line.endswith("\n"):
                break  # torn tail: repaired below
            raise OptimizeError(f"{path} is corrupt (line {len(records) + 1} is not JSON)") from None
        if not isinstance(value, dict):
            raise OptimizeError(f"{path} is corrupt (line {len(records) + 1} is not an object)")
        records.append(value)
        good_end = offset
    if good_end < len(raw):
        with path.open("r+", encoding="utf-8") as fh:
            fh.truncate(len(raw[:good_end].encode("utf-8")))
    return records


class RunFolder:
    """The files of one search (see :mod:`tracemark.experiments.optimize`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.results_file = self.path / "results.jsonl"
        self.proposals_file = self.path / "proposals.jsonl"
        self.reference_file = self.path / "reference.json"
        self.state_file = self.path / "state.json"

    def exists(self) -> bool:
        return self.config_file.is_file()

    def open(self, config: SearchConfig, *, force: bool = False) -> None:
        """Create the folder, or check that its config matches; ``force`` archives old results first."""
        self.path.mkdir(parents=True, exist_ok=True)
        wanted = {"layout": LAYOUT_VERSION, "config": config.as_dict()}
        if self.config_file.is_file():
            try:
                stored = json.loads(self.config_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                if not force:
                    raise OptimizeError(
                        f"{self.config_file} is unreadable ({type(exc).__name__}); use --force to start over"
                    ) from None
                stored = {}
            if stored == wanted:
                return
            if not force:
                old = stored.get("config", {}) if isinstance(stored, dict) else {}
                diff = [k for k in wanted["config"] if old.get(k) != wanted["config"][k]]
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {wanted['config'][k]!r}" for k in diff[:3])
                more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
                raise ConfigMismatch(
                    f"{self.path} was created with another configuration ({shown or 'layout'}{more}); "
                    "use the same options, another --out, or --force to archive its results and start over"
                )
            self._archive()
        atomic_write(self.config_file, json.dumps(wanted, indent=2) + "\n")

    def _archive(self) -> None:
        target = self.path / time.strftime("previous-%Y%m%d-%H%M%S")
        suffix = 0
        while target.exists():
            suffix += 1
            target = target.with_name(target.name.split(".")[0] + f".{suffix}")
        target.mkdir()
        for f in (
            self.config_file,
            self.results_file,
            self.proposals_file,
            self.reference_file,
            self.state_file,
        ):
            if f.exists():
                shutil.move(str(f), target / f.name)

    def results(self) -> list[CandidateResult]:
        return [CandidateResult.from_dict(r) for r in _read_jsonl(self.results_file)]

    def append_result(self, result: CandidateResult) -> None:
        _append_line(self.results_file, asdict(result))

    def proposals(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for rec in _read_jsonl(self.proposals_file):
            out[int(rec["round"])] = [str(c) for c in rec.get("candidates", [])]
        return out

    def append_proposals(self, round_: int, candidates: list[str], *, calls: int) -> None:
        _append_line(self.proposals_file, {"round": round_, "candidates": candidates, "llm_calls": calls})

    def reference(self) -> dict[str, Any] | None:
        if not self.reference_file.is_file():
            return None
        try:
            return json.loads(self.reference_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # recomputed

    def write_reference(self, reference: dict[str, Any]) -> None:
        atomic_write(self.reference_file, json.dumps(reference, indent=2) + "\n")

    def write_state(self, results: Sequence[CandidateResult], *, rounds_done: int, status: str) -> None:
        best = best_of(results)
        state = {
            "status": status,
            "rounds_done": rounds_done,
            "scored": len(results),
            "qualified": sum(r.score is not None for r in results),
            "best": None
            if best is None
            else {"sha": best.sha, "score": best.score, "round": best.round, "instruction": best.instruction},
            "updated": time.time(),
        }
        atomic_write(self.state_file, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
