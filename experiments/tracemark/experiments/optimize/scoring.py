"""Score a candidate instruction by what a fresh proxy student still learns from traces rewritten with it."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracemark.experiments.distill import DistillError, distill_student, load_student
from tracemark.experiments.evaluate import heldout_nll
from tracemark.experiments.optimize.records import (
    CandidateResult,
    Event,
    OptimizeError,
    SearchConfig,
    SearchPlan,
    instruction_sha,
    no_events,
)
from tracemark.experiments.optimize.sample import load_sample
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.builtin.optimized import OptimizedRewriter
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline


class ProxyScorer:
    """Rewrites the sample with an instruction and measures the proxy student's gain."""

    def __init__(
        self,
        config: SearchConfig,
        proxy_dir: str | Path,
        llm: Any,
        *,
        plan: SearchPlan | None = None,
        on_event: Event = no_events,
    ) -> None:
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
        return heldout_nll(
            model,
            tokenizer,
            self.heldout,
            batch_size=self.config.proxy_batch_size,
            max_length=self.config.proxy_max_length,
        )

    def base_nll(self) -> float:
        """Held-out NLL of clean traces under the untrained proxy."""
        model, tokenizer = load_student(self.proxy_dir)
        return self._nll(model, tokenizer)

    def trained_nll(self, examples: Sequence[tuple[str, str]], label: str) -> tuple[float, float]:
        """(held-out NLL after fine-tuning a fresh proxy on ``examples``, seconds)."""
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
