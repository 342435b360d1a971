"""What the instruction search records: its configuration and plan, one scored candidate, the summary."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tracemark.foundation.errors import InvalidInput


class OptimizeError(InvalidInput):
    """Bad input to the search (empty sample, unreadable data, missing run folder, ...)."""


class ConfigMismatch(OptimizeError):
    """The run folder was created with a different scoring configuration."""


Event = Callable[[str, dict[str, Any]], None]


def no_events(kind: str, info: dict[str, Any]) -> None:
    """The default event callback: ignores every event."""
    return None


@dataclass(frozen=True)
class SearchConfig:
    """Everything that changes a candidate's score; a resumed run must use the same values."""

    data: str = "procedural"  # "procedural" or the path of a GSM8K-style JSONL file
    difficulty: str = "easy"  # procedural generator preset
    sample: int = 8  # traces rewritten and trained on per candidate
    heldout: int = 8  # clean traces whose NLL measures the proxy's gain
    seed: int = 0
    proxy: str = "embedded"  # embedded | tiny | a model folder
    proxy_method: str = "lora"  # lora | full
    proxy_epochs: float = 2.0
    proxy_lr: float = 5e-4
    proxy_batch_size: int = 8
    proxy_max_length: int = 512
    llm: str = ""  # id of the rewriting LLM (model id, or endpoint#model)
    rewrite_temperature: float = 0.0  # first attempt; 0 = greedy (batched, reproducible)
    rewrite_max_new_tokens: int = 256
    guard_retries: int = 1
    min_preservation: float = 0.5

    def __post_init__(self) -> None:
        if self.sample < 1:
            raise OptimizeError(f"the sample is empty (sample={self.sample}); use at least 1 trace")
        if self.heldout < 1:
            raise OptimizeError(f"heldout must be >= 1, got {self.heldout}")
        if self.proxy_method not in ("lora", "full"):
            raise OptimizeError(f"proxy method must be lora or full, got {self.proxy_method!r}")
        if self.proxy_epochs <= 0 or self.proxy_lr <= 0 or self.proxy_batch_size < 1:
            raise OptimizeError("proxy epochs and lr must be > 0 and batch size >= 1")
        if self.proxy_max_length < 16:
            raise OptimizeError("proxy max length must be >= 16")
        if not 0.0 <= self.min_preservation <= 1.0:
            raise OptimizeError(f"min preservation must be in [0, 1], got {self.min_preservation}")
        if not 0.0 <= self.rewrite_temperature <= 2.0 or self.rewrite_max_new_tokens < 16:
            raise OptimizeError("rewrite temperature must be in [0, 2] and max new tokens >= 16")
        if self.guard_retries < 0:
            raise OptimizeError("guard retries must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchPlan:
    """How far and how to search; may change between runs of one folder (e.g. more rounds)."""

    rounds: int = 3
    proposals: int = 4  # new candidates asked for per round
    top_k: int = 8  # scored instructions shown in the meta-prompt
    propose_temperature: float = 1.0
    propose_max_new_tokens: int = 320
    seeds: tuple[str, ...] = ()  # extra round-0 instructions besides the built-in one
    workers: int = 8  # traces rewritten concurrently (the local LLM batches them)
    rewrite_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.proposals < 0 or self.top_k < 1 or self.workers < 1:
            raise OptimizeError("rounds and proposals must be >= 0, top_k and workers >= 1")
        if self.rewrite_timeout_s <= 0:
            raise OptimizeError("rewrite timeout must be positive")


@dataclass
class CandidateResult:
    """One line of ``results.jsonl``."""

    sha: str  # sha256 of the instruction text, first 16 hex digits
    instruction: str
    round: int
    origin: str  # built-in | seed | proposed
    score: float | None  # = gain when qualified, else None (lower is better)
    gain: float  # nll_base - nll_after on held-out clean traces (nats/token)
    nll_base: float
    nll_after: float
    relative_gain: float | None  # gain / gain from clean traces (None when that is <= 0)
    preservation: float  # kept / n
    n: int
    kept: int  # rewrites delivered by the guard (answer preserved)
    fell_back: int  # original trace delivered instead (answer changed, error, timeout)
    retried: int  # kept after a guard retry
    answers_preserved: int  # final answers equal to the original's among all n delivered traces
    disqualified: bool
    reason: str
    seconds: float
    rewrite_seconds: float
    train_seconds: float
    scored_at: float
    example: str = ""  # the first delivered trace, for inspection

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SearchSummary:
    """What :func:`run_search` did."""

    results: list[CandidateResult] = field(default_factory=list)  # every logged candidate
    scored_now: int = 0
    reused: int = 0
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> CandidateResult | None:
        return best_of(self.results)


def instruction_sha(instruction: str) -> str:
    """Identity of an instruction in the log: sha256 of the stripped text, 16 hex digits."""
    return hashlib.sha256(instruction.strip().encode("utf-8")).hexdigest()[:16]


def norm_instruction(instruction: str) -> str:
    """The text two instructions are compared by when deduplicating (case, spacing, final period)."""
    return re.sub(r"\s+", " ", instruction.strip().lower()).rstrip(" .")


def best_of(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The qualified candidate with the lowest score (ties: better preservation, then earlier)."""
    qualified = [r for r in results if r.score is not None]
    if not qualified:
        return None
    return min(qualified, key=lambda r: (r.score, -r.preservation, r.scored_at))
