"""Ground truth (which pair each harvested trace carries) and the per-attack damage figures.

The truth comes from the server's ledger (``issued_signature`` rows, pairs re-derived by the issuer) or
from a truth file; attacks never see it. A truth file holds secret pair text: it is written 0600 and
nothing here prints its content.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracemark.experiments.attack.harvest import HarvestError, HarvestRecord


@dataclass(frozen=True)
class TruePair:
    """A delivered pair: ``name`` (e.g. ``f219``) and ``target`` (e.g. ``509512``)."""

    account: str
    name: str
    target: str

    def __repr__(self) -> str:  # the pair is secret
        return f"TruePair(account={self.account!r})"


Truth = dict[str, list[TruePair]]  # trace_id -> pairs it carries


def pair_present(trace: str, pair: TruePair) -> bool:
    """Both the pair's name and its target still appear in ``trace`` (any phrasing)."""
    name = re.search(rf"(?<![A-Za-z0-9]){re.escape(pair.name)}(?![0-9])", trace)
    target = re.search(rf"(?<![0-9]){re.escape(pair.target)}(?![0-9])", trace.replace(",", ""))
    return bool(name and target)


def truth_from_ledger(engine, issuer, trace_ids: Iterable[str]) -> Truth:
    """The pairs the ledger says each of ``trace_ids`` carries (empty list: unsigned)."""
    from tracemark.forensics.ledger import records  # deferred: the ledger stack only for truth
    from tracemark.forensics.ledger.db import session_scope  # deferred: as above

    truth: Truth = {}
    with session_scope(engine) as session:
        for trace_id in trace_ids:
            rows = records.issued_for_trace(session, trace_id=trace_id) if trace_id else []
            pairs = []
            for row in rows:
                pair = issuer.pairs_for_version(row.account, row.key_version)[row.pair_index]
                pairs.append(TruePair(row.account, pair.trigger.rstrip("= ").strip(), pair.target))
            truth[trace_id] = pairs
    return truth


def write_truth(truth: Truth, path: Path) -> Path:
    """Write a truth file (JSONL, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for trace_id, pairs in truth.items():
            row = {"trace_id": trace_id, "pairs": [p.__dict__ for p in pairs]}
            fh.write(json.dumps(row) + "\n")
    return path


def read_truth(path: Path) -> Truth:
    """Read a truth file written by :func:`write_truth`."""
    path = Path(path)
    if not path.is_file():
        raise HarvestError(f"truth file not found: {path}")
    truth: Truth = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            truth[row["trace_id"]] = [TruePair(**p) for p in row["pairs"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise HarvestError(f"{path}:{n}: not a truth record") from None
    return truth


@dataclass(frozen=True)
class Share:
    """``k`` of ``n`` with a Wilson 95% interval."""

    k: int
    n: int
    lo: float
    hi: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def as_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "share": self.value, "lo": self.lo, "hi": self.hi}

    def __str__(self) -> str:
        if not self.n:
            return "n/a"
        return f"{self.value:.1%} [{self.lo:.1%}, {self.hi:.1%}] ({self.k}/{self.n})"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> Share:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(nan, nan)`` bounds for n = 0)."""
    if n <= 0:
        return Share(k, n, float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Share(k, n, lo, hi)


def signal_removed(before: Sequence[HarvestRecord], after: Sequence[HarvestRecord], truth: Truth) -> Share:
    """Share of the pair occurrences present before the attack that are gone after it."""
    k = n = 0
    for b, a in zip(before, after, strict=True):
        for pair in truth.get(b.trace_id, []):
            if pair_present(b.trace, pair):
                n += 1
                k += int(not pair_present(a.trace, pair))
    return wilson(k, n)


def clean_altered(before: Sequence[HarvestRecord], after: Sequence[HarvestRecord], truth: Truth) -> Share:
    """Share of unsigned traces (no pair in the truth) that the attack changed."""
    k = n = 0
    for b, a in zip(before, after, strict=True):
        if not truth.get(b.trace_id):
            n += 1
            k += int(a.trace != b.trace)
    return wilson(k, n)
