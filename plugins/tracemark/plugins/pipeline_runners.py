"""How a pipeline step's attempts run: in a worker thread (built-ins, in-process registrations) or in a
killable worker process (third-party plugins). Internal to :mod:`tracemark.plugins.pipeline`."""

from __future__ import annotations

import concurrent.futures as cf
import uuid
from typing import TYPE_CHECKING, Any

from tracemark.plugins.api import RewriteContext, Rewriter
from tracemark.plugins.isolation import StepTask, WorkerTimeout, class_ref

if TYPE_CHECKING:
    from tracemark.plugins.pipeline import RewritePipeline


class _TimedOut(Exception):
    def __init__(self, quarantined: bool, how: str) -> None:
        super().__init__(how)
        self.quarantined = quarantined
        self.how = how


class _Runner:
    """Runs one step's attempts (and its ``accepted`` hook) somewhere the pipeline can bound in time."""

    def rewrite(self, trace: str, ctx: RewriteContext, seed: int) -> Any:
        raise NotImplementedError

    def accepted(self, output: str, ctx: RewriteContext, seed: int) -> None:
        raise NotImplementedError


class _ThreadRunner(_Runner):
    """In-process: built-ins and in-process registrations (ours, linear-time), in worker threads."""

    def __init__(self, pipeline: RewritePipeline, name: str, rewriter: Rewriter, limit: float) -> None:
        self.pipeline, self.name, self.rewriter, self.limit = pipeline, name, rewriter, limit

    def rewrite(self, trace: str, ctx: RewriteContext, seed: int) -> Any:
        future = self.pipeline._executor.submit(self.rewriter.rewrite, trace, ctx)
        try:
            return future.result(timeout=self.limit)
        except cf.TimeoutError:
            future.cancel()
            protective = type(self.rewriter).fallback is not Rewriter.fallback
            quarantined = self.pipeline._abandon(self.name, future, protective=protective)
            raise _TimedOut(quarantined, "worker thread abandoned") from None

    def accepted(self, output: str, ctx: RewriteContext, seed: int) -> None:
        self.rewriter.accepted(output, ctx)


class _ProcessRunner(_Runner):
    """Third-party plugins: in a worker process of the pipeline's pool, killed at the time limit."""

    def __init__(
        self, pipeline: RewritePipeline, name: str, cls: type[Rewriter], options: dict, limit: float
    ) -> None:
        self.pipeline, self.name, self.cls, self.options, self.limit = pipeline, name, cls, options, limit
        self.step = uuid.uuid4().hex
        self._lease: Any = None
        self._worker: Any = None

    def _call(self, op: str, trace: str, ctx: RewriteContext, seed: int) -> Any:
        if self._worker is None:
            try:
                self._lease = self.pipeline._pool.lease(self.limit)  # type: ignore[union-attr]
                self._worker = self._lease.__enter__()
            except WorkerTimeout:
                self._lease = None
                raise _TimedOut(False, "no plugin worker free") from None
        task = StepTask(
            op,
            self.step,
            class_ref(self.cls),
            self.options,
            trace,
            {
                "problem": ctx.problem,
                "account": ctx.account,
                "trace_id": ctx.trace_id,
                "seed": seed,
                "attempt": ctx.attempt,
                "watermark_policy": ctx.watermark_policy,
                "llm_model": getattr(ctx.llm, "model_id", ""),
            },
            ctx.llm is not None,
        )
        try:
            output, notes = self._worker.call(task, self.limit, ctx.llm)
        except WorkerTimeout:
            raise _TimedOut(self.pipeline._killed(self.name), "worker process killed") from None
        self.pipeline._answered(self.name)
        ctx.notes.extend(notes)
        return output

    def rewrite(self, trace: str, ctx: RewriteContext, seed: int) -> Any:
        return self._call("rewrite", trace, ctx, seed)

    def accepted(self, output: str, ctx: RewriteContext, seed: int) -> None:
        if self.cls.accepted is not Rewriter.accepted:  # the default hook does nothing: skip the round trip
            self._call("accepted", output, ctx, seed)

    def close(self) -> None:
        if self._lease is not None:
            self._lease.__exit__(None, None, None)
