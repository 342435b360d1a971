"""OPRO-style search for the ``optimized`` rewriter's instruction (``tracemark optimize``).

Each candidate instruction is scored by what a small proxy student still learns from traces rewritten
with it:

1. the sample's clean traces are rewritten with the candidate through the real ``optimized`` rewriter and
   the answer guard (:class:`~tracemark.plugins.pipeline.RewritePipeline`); ``kept`` counts the rewrites
   the guard delivered, ``fell_back`` those it replaced by the original trace;
2. a fresh proxy student is fine-tuned for a fixed budget on the delivered traces;
3. ``gain`` = held-out NLL of *clean* traces under the untrained proxy minus the same after fine-tuning
   (nats per token). Lower gain = better protection. ``score`` is the gain of a qualified candidate;
   a candidate whose ``preservation`` (kept / sample) is below the threshold is disqualified (score null).

New candidates come from an LLM shown the best-scored instructions so far (a meta-prompt, OPRO style);
they are deduplicated against everything already seen.

Run folder (resumable; the JSONL files are append-only, one ``write`` per line):

* ``config.json`` - the scoring configuration; a rerun must match it (else :class:`ConfigMismatch`);
* ``reference.json`` - untrained proxy NLL and the gain from clean (unrewritten) traces, computed once;
* ``proposals.jsonl`` - one line per round: the instructions proposed for it (so a resumed round reuses
  them instead of asking the LLM again);
* ``results.jsonl`` - one line per scored candidate (see :class:`CandidateResult`);
* ``state.json`` - a summary rewritten after each candidate (best so far, counts); derived, informative.

An interrupted run (Ctrl-C) loses at most the candidate being scored; rerunning the same command
continues where it stopped, never re-scoring a logged instruction.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "CandidateResult",
    "ConfigMismatch",
    "OptimizeError",
    "ProxyScorer",
    "RunFolder",
    "SearchConfig",
    "SearchPlan",
    "SearchSummary",
    "install_instruction",
    "instruction_sha",
    "meta_prompt",
    "parse_proposal",
    "propose_instructions",
    "read_seed_instructions",
    "run_search",
]

LAYOUT_VERSION = 1
MIN_PROPOSAL_CHARS = 40
MAX_PROPOSAL_CHARS = 2000


class OptimizeError(ValueError):
    """Bad input to the search (empty sample, unreadable data, missing run folder, ...)."""


class ConfigMismatch(OptimizeError):
    """The run folder was created with a different scoring configuration."""


Event = Callable[[str, dict[str, Any]], None]


def _quiet(kind: str, info: dict[str, Any]) -> None:
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


def _norm(instruction: str) -> str:
    return re.sub(r"\s+", " ", instruction.strip().lower()).rstrip(" .")


def best_of(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The qualified candidate with the lowest score (ties: better preservation, then earlier)."""
    qualified = [r for r in results if r.score is not None]
    if not qualified:
        return None
    return min(qualified, key=lambda r: (r.score, -r.preservation, r.scored_at))


# -- run folder --------------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
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
    """The files of one search (see the module docstring)."""

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
        _atomic_write(self.config_file, json.dumps(wanted, indent=2) + "\n")

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
        _atomic_write(self.reference_file, json.dumps(reference, indent=2) + "\n")

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
        _atomic_write(self.state_file, json.dumps(state, indent=2, ensure_ascii=False) + "\n")


# -- data ------------------------------------------------------------------------------------------
def load_sample(config: SearchConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, heldout) lists of (problem, clean trace), deterministic for the config."""
    from tracemark.foundation.problems import ProblemError, generate_problems, load_gsm8k_jsonl

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


# -- scoring ---------------------------------------------------------------------------------------
class ProxyScorer:
    """Rewrites the sample with an instruction and measures the proxy student's gain."""

    def __init__(
        self,
        config: SearchConfig,
        proxy_dir: str | Path,
        llm: Any,
        *,
        plan: SearchPlan | None = None,
        on_event: Event = _quiet,
    ) -> None:
        from tracemark.plugins.builtin.optimized import OptimizedRewriter
        from tracemark.plugins.loader import RewriterRegistry
        from tracemark.plugins.pipeline import RewritePipeline

        self.config = config
        self.plan = plan or SearchPlan()
        self.proxy_dir = Path(proxy_dir)
        self.llm = llm
        self.on_event = on_event
        self.train, self.heldout = load_sample(config)
        registry = RewriterRegistry.from_classes(OptimizedRewriter)
        self.pipeline = RewritePipeline(
            registry, timeout_s=self.plan.rewrite_timeout_s, retries=config.guard_retries
        )

    # NLL of the held-out clean traces under a model
    def _nll(self, model: Any, tokenizer: Any) -> float:
        from tracemark.experiments.evaluate import heldout_nll

        return heldout_nll(
            model,
            tokenizer,
            self.heldout,
            batch_size=self.config.proxy_batch_size,
            max_length=self.config.proxy_max_length,
        )

    def base_nll(self) -> float:
        """Held-out NLL of clean traces under the untrained proxy."""
        from tracemark.experiments.distill import load_student

        model, tokenizer = load_student(self.proxy_dir)
        return self._nll(model, tokenizer)

    def trained_nll(self, examples: Sequence[tuple[str, str]], label: str) -> tuple[float, float]:
        """(held-out NLL after fine-tuning a fresh proxy on ``examples``, seconds)."""
        from tracemark.experiments.distill import DistillError, distill_student

        started = time.perf_counter()

        def progress(p: Any) -> None:
            self.on_event("train", {"label": label, "step": p.step, "total": p.total_steps, "loss": p.loss})

        try:
            model, tokenizer = distill_student(
                self.proxy_dir,
                examples,
                method=self.config.proxy_method,  # type: ignore[arg-type]
                epochs=self.config.proxy_epochs,
                lr=self.config.proxy_lr,
                batch_size=self.config.proxy_batch_size,
                max_length=self.config.proxy_max_length,
                seed=self.config.seed,
                progress=progress,
            )
        except DistillError as exc:
            raise OptimizeError(f"proxy fine-tuning failed: {exc}") from None
        nll = self._nll(model, tokenizer)
        del model
        return nll, time.perf_counter() - started

    def rewrite(self, instruction: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
        """The delivered traces (rewrite or fallback) and guard counts for ``instruction``."""
        from tracemark.plugins.api import RewriteContext

        options = {
            "optimized": {
                "instruction": instruction,
                "temperature": self.config.rewrite_temperature,
                "max_new_tokens": self.config.rewrite_max_new_tokens,
            }
        }

        def one(index: int) -> Any:
            problem, trace = self.train[index]
            context = RewriteContext(
                problem=problem,
                trace_id=f"optimize-{index}",
                rng=random.Random(self.config.seed * 1_000_003 + index),
                llm=self.llm,
            )
            return self.pipeline.run(trace, names=["optimized"], options=options, context=context)

        n = len(self.train)
        results: list[Any] = [None] * n
        done = 0
        # Daemon workers (not a ThreadPoolExecutor): Ctrl-C must not wait for rewrites in flight.
        finished: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
        todo: queue.Queue[int] = queue.Queue()
        for i in range(n):
            todo.put(i)

        def worker() -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    finished.put((i, one(i), None))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    finished.put((i, None, exc))

        for _ in range(min(self.plan.workers, n)):
            threading.Thread(target=worker, name="optimize-rewrite", daemon=True).start()
        while done < n:
            i, res, exc = finished.get()
            if exc is not None:
                raise exc
            results[i] = res
            done += 1
            self.on_event("rewrite", {"done": done, "total": n})
        counts = {"kept": 0, "fell_back": 0, "retried": 0, "answers_preserved": 0}
        delivered = []
        for (problem, _), res in zip(self.train, results):
            step = res.steps[0]
            counts["fell_back" if step.fell_back else "kept"] += 1
            counts["retried"] += step.guard == "preserved_after_retry"
            counts["answers_preserved"] += bool(res.answer_preserved)
            delivered.append((problem, res.trace))
        return delivered, counts

    def reference(self) -> dict[str, Any]:
        """Untrained proxy NLL and the gain from the clean (unrewritten) sample."""
        base = self.base_nll()
        clean, seconds = self.trained_nll(self.train, "clean traces")
        return {"nll_base": base, "clean_nll_after": clean, "clean_gain": base - clean, "seconds": seconds}

    def score(
        self, instruction: str, *, round_: int, origin: str, reference: dict[str, Any]
    ) -> CandidateResult:
        """Rewrite, fine-tune, measure: one :class:`CandidateResult`."""
        started = time.perf_counter()
        delivered, counts = self.rewrite(instruction)
        rewrite_s = time.perf_counter() - started
        nll_after, train_s = self.trained_nll(delivered, instruction_sha(instruction))
        n = len(delivered)
        preservation = counts["kept"] / n
        gain = reference["nll_base"] - nll_after
        disqualified = preservation < self.config.min_preservation
        reason = (
            f"the guard kept {counts['kept']}/{n} rewrites (< {self.config.min_preservation:g})"
            if disqualified
            else ""
        )
        clean_gain = reference["clean_gain"]
        return CandidateResult(
            sha=instruction_sha(instruction),
            instruction=instruction.strip(),
            round=round_,
            origin=origin,
            score=None if disqualified else gain,
            gain=gain,
            nll_base=reference["nll_base"],
            nll_after=nll_after,
            relative_gain=gain / clean_gain if clean_gain > 0 else None,
            preservation=preservation,
            n=n,
            kept=counts["kept"],
            fell_back=counts["fell_back"],
            retried=counts["retried"],
            answers_preserved=counts["answers_preserved"],
            disqualified=disqualified,
            reason=reason,
            seconds=time.perf_counter() - started,
            rewrite_seconds=rewrite_s,
            train_seconds=train_s,
            scored_at=time.time(),
            example=delivered[0][1] if delivered else "",
        )


# -- proposals -------------------------------------------------------------------------------------
META_SYSTEM = (
    "You design instructions for a rewriting model. The rewriting model receives a math word problem and "
    "its step-by-step solution, and rewrites the solution following your instruction. A small student "
    "model is then fine-tuned on the rewritten solutions. A good instruction makes the student learn as "
    "little as possible (low gain), while the rewrite keeps every number and the same final answer as "
    "\\boxed{ANSWER}."
)


def meta_prompt(scored: Sequence[CandidateResult], *, top_k: int = 8) -> list[dict[str, str]]:
    """The OPRO meta-prompt: the ``top_k`` best qualified instructions, worst first, with their gains."""
    qualified = sorted((r for r in scored if r.score is not None), key=lambda r: r.score, reverse=True)
    shown = qualified[-top_k:]
    lines = ["Previous instructions and the student's gain (lower is better), worst first:", ""]
    for r in shown:
        lines.append(f"<INS>{r.instruction}</INS>")
        lines.append(f"gain: {r.score:.4f}; rewrites kept: {r.kept}/{r.n}")
        lines.append("")
    rejected = [r for r in scored if r.score is None][-2:]
    for r in rejected:
        lines.append(f"<INS>{r.instruction}</INS>")
        lines.append(f"rejected: {r.reason}")
        lines.append("")
    lines.append(
        "Write one new instruction, different from all of the above, that should give a lower gain. "
        "It must still require keeping every number and ending with the final answer as \\boxed{ANSWER}. "
        "Reply with the new instruction only, between <INS> and </INS>."
    )
    return [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


_INS = re.compile(r"<INS>(.*?)(?:</INS>|$)", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"^[(\"']?[A-Za-z][a-z'-]*[)\"']?[,.;:!?)]*$")
_LEAD = re.compile(r"^\s*(?:new\s+)?instruction\s*:\s*", re.IGNORECASE)


def parse_proposal(reply: str) -> str | None:
    """The instruction in an LLM reply (inside ``<INS>...</INS>`` if present), or ``None`` if unusable:
    too short or long, mostly non-words, or not asking for the ``\\boxed{}`` answer line."""
    from tracemark.plugins.builtin.llm_base import strip_preamble

    found = [m.group(1) for m in _INS.finditer(reply or "") if m.group(1).strip()]
    text = found[0] if found else strip_preamble(reply or "")
    text = _LEAD.sub("", text.replace("</INS>", "").replace("<INS>", "")).strip().strip('"').strip()
    text = re.sub(r"[ \t]+", " ", text)
    tokens = text.split()
    words = [t for t in tokens if _WORD.match(t)]
    if not MIN_PROPOSAL_CHARS <= len(text) <= MAX_PROPOSAL_CHARS or len(words) < 6:
        return None
    if len(words) < 0.6 * len(tokens):  # mostly not words: noise from a weak model
        return None
    if "boxed" not in text.lower():  # the meta-prompt requires it; off-topic text from weak models lacks it
        return None
    return text


def propose_instructions(
    llm: Any,
    scored: Sequence[CandidateResult],
    *,
    n: int,
    known: set[str],
    seed: int,
    top_k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 320,
    max_calls: int | None = None,
    on_event: Event = _quiet,
) -> tuple[list[str], int]:
    """Up to ``n`` new instructions (deduplicated against ``known``, normalised) and the LLM calls made.

    LLM failures and unusable replies are skipped; at most ``max_calls`` (default ``3 n``) calls.
    """
    messages = meta_prompt(scored, top_k=top_k)
    seen = set(known)
    out: list[str] = []
    calls = 0
    limit = max_calls if max_calls is not None else 3 * n
    rng = random.Random(seed)
    while len(out) < n and calls < limit:
        calls += 1
        try:
            reply = llm.chat(
                messages, max_new_tokens=max_new_tokens, temperature=temperature, seed=rng.randrange(2**31)
            )
        except Exception as exc:  # a flaky endpoint: try again within the call budget
            on_event("propose_error", {"error": f"{type(exc).__name__}: {str(exc)[:120]}"})
            continue
        text = parse_proposal(reply)
        on_event("propose", {"calls": calls, "accepted": text is not None and _norm(text) not in seen})
        if text is None or _norm(text) in seen:
            continue
        seen.add(_norm(text))
        out.append(text)
    return out, calls


# -- the search ------------------------------------------------------------------------------------
def prepare_proxy(config: SearchConfig, run_dir: Path) -> Path:
    """The proxy student's model folder: the embedded model, a tiny random model, or a given folder."""
    if config.proxy == "embedded":
        from tracemark.foundation.models.embedded import ensure_embedded_model

        return ensure_embedded_model()
    if config.proxy == "tiny":
        from tracemark.foundation.models.tiny import build_tiny_model

        folder = run_dir / "proxy-tiny"
        if not (folder / "config.json").is_file():
            build_tiny_model(folder, seed=config.seed)
        return folder
    folder = Path(config.proxy)
    if not (folder / "config.json").is_file():
        raise OptimizeError(f"proxy must be embedded, tiny or a model folder; {folder} has no config.json")
    return folder


def run_search(
    run_dir: str | Path,
    config: SearchConfig,
    plan: SearchPlan,
    llm: Any,
    *,
    force: bool = False,
    proxy_dir: str | Path | None = None,
    on_event: Event = _quiet,
) -> SearchSummary:
    """Run (or continue) the search in ``run_dir``; see the module docstring. ``llm`` has ``chat``."""
    folder = RunFolder(run_dir)
    folder.open(config, force=force)
    proxy = Path(proxy_dir) if proxy_dir is not None else prepare_proxy(config, folder.path)
    scorer = ProxyScorer(config, proxy, llm, plan=plan, on_event=on_event)
    results = folder.results()
    summary = SearchSummary(results=results)
    by_sha = {r.sha: r for r in results}
    known = {_norm(r.instruction) for r in results}

    reference = folder.reference()
    if reference is None:
        on_event("stage", {"text": "reference: untrained proxy and clean traces"})
        reference = scorer.reference()
        folder.write_reference(reference)
    summary.reference = reference

    def score_all(round_: int, candidates: list[tuple[str, str]]) -> None:
        for index, (instruction, origin) in enumerate(candidates):
            sha = instruction_sha(instruction)
            if sha in by_sha:
                summary.reused += 1
                continue
            on_event(
                "candidate_start",
                {"round": round_, "index": index, "count": len(candidates), "sha": sha, "origin": origin},
            )
            result = scorer.score(instruction, round_=round_, origin=origin, reference=reference)
            folder.append_result(result)
            results.append(result)
            by_sha[sha] = result
            known.add(_norm(instruction))
            summary.scored_now += 1
            folder.write_state(results, rounds_done=round_, status="running")
            on_event("candidate", {"result": result, "best": best_of(results)})

    from tracemark.plugins.builtin.optimized import OPTIMIZED_INSTRUCTION

    initial = [(OPTIMIZED_INSTRUCTION, "built-in")] + [(s, "seed") for s in plan.seeds]
    deduped: list[tuple[str, str]] = []
    for text, origin in initial:
        if _norm(text) not in {_norm(t) for t, _ in deduped}:
            deduped.append((text.strip(), origin))
    on_event("round", {"round": 0, "rounds": plan.rounds, "count": len(deduped)})
    score_all(0, deduped)
    known.update(_norm(t) for t, _ in deduped)

    stored = folder.proposals()
    for round_ in range(1, plan.rounds + 1):
        if round_ in stored:
            candidates = stored[round_]
        else:
            on_event("stage", {"text": f"round {round_}: asking the LLM for {plan.proposals} instructions"})
            candidates, calls = propose_instructions(
                llm,
                results,
                n=plan.proposals,
                known=known,
                seed=config.seed * 7919 + round_,
                top_k=plan.top_k,
                temperature=plan.propose_temperature,
                max_new_tokens=plan.propose_max_new_tokens,
                on_event=on_event,
            )
            folder.append_proposals(round_, candidates, calls=calls)
            stored[round_] = candidates
        on_event("round", {"round": round_, "rounds": plan.rounds, "count": len(candidates)})
        known.update(_norm(c) for c in candidates)
        score_all(round_, [(c, "proposed") for c in candidates])
    folder.write_state(results, rounds_done=plan.rounds, status="finished")
    return summary


# -- install ---------------------------------------------------------------------------------------
def install_instruction(
    run_dir: str | Path, target: str | Path | None = None, *, min_improvement: float = 0.0
) -> tuple[Path, CandidateResult]:
    """Write the best instruction of ``run_dir`` where the ``optimized`` rewriter looks for it.

    A candidate other than the built-in instruction is installed only when its score is at least
    ``min_improvement`` (a fraction) below the built-in's: small differences on a small sample are noise.
    """
    from tracemark.plugins.builtin.optimized import installed_instruction_path

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
        _atomic_write(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise OptimizeError(f"cannot write {path} ({type(exc).__name__}: {exc.strerror or exc})") from None
    return path, best
