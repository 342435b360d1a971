"""Run rewriters in sequence with an answer guard, time limits and fallbacks.

A :class:`RewritePipeline` is created once (per server) and is safe to share between concurrent requests:
it keeps no per-request state, each run creates fresh rewriter instances, and each attempt gets its own
copy of the context (own seeded RNG and notes; shared host services: ``llm``, ``signatures``,
``watermark_policy``, ``proxy``).

Per step and attempt:

* a third-party rewriter (a distribution other than ``tracemark``), when the pipeline has a ``pool``
  (:class:`~tracemark.plugins.isolation.WorkerPool`; the server always gives one), runs in a worker
  *process*: at ``timeout_s`` that process is killed (its CPU use stops at once) and replaced; after
  ``max_abandoned`` consecutive time-outs the rewriter is quarantined (status ``failed``).
* built-ins and in-process registrations (ours; linear-time) run in a worker thread; the caller waits at
  most ``timeout_s``. A thread still running after that is *abandoned* (Python cannot kill threads): it is
  counted, the step falls back to its input, and once ``max_abandoned`` threads of one rewriter are still
  alive that rewriter is quarantined so a step that always hangs cannot exhaust the process (a rewriter
  with a protected fallback, below, is not: while ``max_abandoned`` of its threads are alive, its steps go
  straight to that fallback, outcome ``skipped``, without starting a thread). By default
  each attempt runs in a fresh *daemon* thread so an abandoned one never blocks interpreter exit; pass an
  ``executor`` (``concurrent.futures.Executor``) to use a pool instead.
* the answer guard compares the normalised final answers of the step's input and output; on mismatch it
  retries (``context.attempt`` 1, 2, ...) up to ``retries`` times, then falls back to the step's input.
  The intermediate-result guard (``equations.check_rewrite``: no false equation introduced, every result
  of the input kept) is checked the same way on the steps ``equation_guard`` selects (``None``: the
  ``equations.EQUATION_GUARDED`` rewriters; ``True``/``False``: all/none; or a collection of names).
* a step that raises falls back as well (outcome ``error``). Its detail is ``"error id <12 hex>: the
  rewriter raised an error ..."``; the exception's text goes to the log under that id only, since a
  plugin's message may hold anything (a ``RewriterError`` of a built-in or in-process rewriter is
  written for the caller and is shown as ``"RewriterError: message"``).

With ``on_error="raise"`` a raising step raises :class:`RewriterFailed` and a hung one
:class:`RewriterTimeout` instead of falling back (the server maps them to INTERNAL / DEADLINE_EXCEEDED);
guard mismatches always fall back. Since steps run in order, a watermark step (which must be last) sees a
fallen-back trace and still signs it.

**Protected fallbacks.** "Falling back" passes on the step's input, unless the rewriter overrides
:meth:`Rewriter.fallback` (built-ins and in-process registrations only; ``watermark``'s is the template
weave of the same pair): then a step that raised, timed out, was skipped or changed the answer on every
attempt passes on ``fallback(input)``, computed in the caller's thread, checked by the answer guard and
followed by ``accepted`` (a signature is recorded only when delivered); the detail says ``protected
fallback``, the guard what went wrong. If that fails too (raises anything but ``RewriterError``, changes
the answer, or ``accepted`` raises), the run fails with :class:`RewriterFailed` whatever ``on_error``
says: the unprotected input of a protective step is never delivered silently. A ``RewriterError`` from
``fallback`` means there is nothing to protect with (e.g. no signature issuer): the input goes on.

Guard outcomes (``StepResult.guard``) and the proto ``GuardOutcome`` they map to:
``preserved`` / ``preserved_after_retry`` / ``fell_back`` / ``no_answer`` map one to one; ``error``,
``timeout`` and ``skipped`` (rewriter quarantined) returned the step's input, i.e. FELL_BACK with a detail.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from tracemark.plugins.answers import answers_match, extract_final_answer, normalize_answer
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError
from tracemark.plugins.equations import check_rewrite, guard_applies
from tracemark.plugins.errors import (
    InvalidRewriterOptions,
    RewriterFailed,
    RewriterTimeout,
    UnknownRewriterError,
)
from tracemark.plugins.isolation import WorkerPool
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline_runners import _ProcessRunner, _Runner, _ThreadRunner, _TimedOut

log = logging.getLogger(__name__)

Guard = Literal["preserved", "preserved_after_retry", "fell_back", "no_answer", "error", "timeout", "skipped"]
OnError = Literal["fallback", "raise"]
FALLBACK_OUTCOMES = frozenset({"fell_back", "error", "timeout", "skipped"})
# Rewriters of these distributions run in-process ("" = registered in-process by the embedding host).
TRUSTED_DISTRIBUTIONS = frozenset({"tracemark", ""})


@dataclass
class StepResult:
    """What happened in one pipeline step."""

    name: str
    version: str
    guard: Guard
    attempts: int
    seconds: float
    detail: str = ""
    protected_fallback: bool = False  # the step failed and its rewriter's protected fallback went on

    @property
    def fell_back(self) -> bool:
        """True when the step failed: its input went on unchanged, or its protected fallback did."""
        return self.guard in FALLBACK_OUTCOMES


@dataclass
class PipelineResult:
    """The outcome of :meth:`RewritePipeline.run`."""

    trace: str
    original_answer: str | None
    final_answer: str | None
    answer_preserved: bool
    steps: list[StepResult] = field(default_factory=list)
    trace_id: str = ""
    seconds: float = 0.0


class _DaemonThreadExecutor(cf.Executor):
    """Run every task in a fresh daemon thread (an abandoned, hung task never blocks process exit)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: cf.Future = cf.Future()

        def target() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

        threading.Thread(target=target, name="tracemark-rewriter", daemon=True).start()
        return future


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _validation_message(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "options"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return f"invalid options for rewriter {name!r}: " + "; ".join(parts) + more


def _attempt_seed(base: int, step: int, name: str, attempt: int) -> int:
    digest = hashlib.sha256(f"{base}|{step}|{name}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class RewritePipeline:
    """Compose rewriters with the answer guard and per-step isolation (thread-safe, reusable)."""

    def __init__(
        self,
        registry: RewriterRegistry,
        *,
        timeout_s: float = 30.0,
        retries: int = 1,
        executor: cf.Executor | None = None,
        on_error: OnError = "fallback",
        max_abandoned: int = 4,
        pool: WorkerPool | None = None,
        equation_guard: bool | Collection[str] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if on_error not in ("fallback", "raise"):
            raise ValueError("on_error must be 'fallback' or 'raise'")
        if max_abandoned < 1:
            raise ValueError("max_abandoned must be >= 1")
        self.registry = registry
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.on_error: OnError = on_error
        self.max_abandoned = int(max_abandoned)
        self._executor = executor or _DaemonThreadExecutor()
        self._lock = threading.Lock()
        self._abandoned: dict[str, int] = {}
        self._abandoned_total = 0
        self._pool = pool
        # which steps the intermediate-result guard checks (see the module doc)
        self.equation_guard: bool | set[str] | None = (
            equation_guard if isinstance(equation_guard, bool | None) else set(equation_guard)
        )
        self._hung: dict[str, int] = {}  # consecutive time-outs of an isolated rewriter

    # -- bookkeeping for abandoned threads ---------------------------------------------------------
    def abandoned(self, name: str | None = None) -> int:
        """Worker threads still running after their time limit (for ``name``, or all)."""
        with self._lock:
            return self._abandoned.get(name, 0) if name else sum(self._abandoned.values())

    @property
    def abandoned_total(self) -> int:
        """How many attempts were ever abandoned by this pipeline."""
        with self._lock:
            return self._abandoned_total

    def _abandon(self, name: str, future: cf.Future, *, protective: bool = False) -> bool:
        """Count an abandoned attempt; True when ``name`` just reached the bound and was quarantined (a
        ``protective`` rewriter is never quarantined: at the bound its steps go to its protected fallback
        without starting a thread, until its hung attempts end)."""
        with self._lock:
            self._abandoned[name] = self._abandoned.get(name, 0) + 1
            self._abandoned_total += 1
            live = self._abandoned[name]

        def finished(_: cf.Future) -> None:
            with self._lock:
                self._abandoned[name] = max(0, self._abandoned.get(name, 0) - 1)

        future.add_done_callback(finished)
        if live >= self.max_abandoned and not future.done() and not protective:
            self.registry.quarantine(
                name, f"disabled after {live} time-outs whose worker threads are still running"
            )
            return True
        return False

    def _killed(self, name: str) -> bool:
        """Count a worker killed at its limit; True when ``name`` just reached the bound and was quarantined
        (a plugin that hangs every time would otherwise cost a process start per call)."""
        with self._lock:
            self._abandoned_total += 1
            self._hung[name] = hung = self._hung.get(name, 0) + 1
        if hung >= self.max_abandoned:
            self.registry.quarantine(name, f"disabled after {hung} consecutive time-outs")
            return True
        return False

    def _answered(self, name: str) -> None:
        with self._lock:
            self._hung.pop(name, None)

    # -- validation ---------------------------------------------------------------------------------
    def prepare(
        self, names: Sequence[str], options: Mapping[str, Mapping[str, Any] | None] | None = None
    ) -> list[tuple[str, type[Rewriter], Any]]:
        """Check the pipeline and parse every step's options before any work is done."""
        names = [n.strip() for n in names if n and n.strip()]
        if not names:
            raise InvalidRewriterOptions("the rewriter pipeline is empty")
        options = dict(options or {})
        stray = sorted(set(options) - set(names))
        if stray:
            raise InvalidRewriterOptions(
                f"options given for rewriters not in the pipeline: {', '.join(stray)}"
            )
        steps = []
        for index, name in enumerate(names):
            cls = self.registry.get(name)  # UnknownRewriterError
            if cls.must_be_last and index != len(names) - 1:
                raise InvalidRewriterOptions(
                    f"rewriter {name!r} must be the last step of the pipeline (a later rewrite could undo it)"
                )
            raw = options.get(name)
            if raw is not None and not isinstance(raw, Mapping):
                raise InvalidRewriterOptions(f"options for rewriter {name!r} must be a JSON object")
            try:
                parsed = cls.parse_options(dict(raw or {}))
            except ValidationError as exc:
                raise InvalidRewriterOptions(_validation_message(name, exc)) from None
            except (TypeError, ValueError) as exc:
                raise InvalidRewriterOptions(f"invalid options for rewriter {name!r}: {exc}") from None
            steps.append((name, cls, parsed))
        return steps

    # -- running ------------------------------------------------------------------------------------
    def run(
        self,
        trace: str,
        *,
        names: Sequence[str],
        options: Mapping[str, Mapping[str, Any] | None] | None = None,
        context: RewriteContext | None = None,
        timeout_s: float | None = None,
        on_error: OnError | None = None,
    ) -> PipelineResult:
        """Rewrite ``trace`` through ``names`` in order; see the module docstring for the guarantees."""
        if not isinstance(trace, str):
            raise InvalidRewriterOptions("trace must be a string")
        policy = on_error or self.on_error
        if policy not in ("fallback", "raise"):
            raise InvalidRewriterOptions(f"on_error must be 'fallback' or 'raise', not {policy!r}")
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        if limit <= 0:
            raise InvalidRewriterOptions("timeout_s must be positive")
        steps = self.prepare(names, options)
        context = context if context is not None else RewriteContext()
        if not context.trace_id:
            context.trace_id = uuid.uuid4().hex
        base_seed = context.rng.getrandbits(63)
        started = time.perf_counter()
        original_answer = extract_final_answer(trace)
        current = trace
        results: list[StepResult] = []
        for index, (name, cls, parsed) in enumerate(steps):
            current, step = self._run_step(
                index, name, cls, parsed, current, context, base_seed, limit, policy
            )
            results.append(step)
        final_answer = extract_final_answer(current)
        preserved = (
            answers_match(original_answer, final_answer)
            if original_answer is not None
            else final_answer is None
        )
        return PipelineResult(
            current,
            original_answer,
            final_answer,
            preserved,
            results,
            context.trace_id,
            time.perf_counter() - started,
        )

    def _version(self, name: str) -> str:
        try:
            return self.registry.record(name).version
        except UnknownRewriterError:
            return ""

    def isolated(self, name: str) -> bool:
        """Whether ``name``'s steps run in a killable worker process (third-party plugins, with a pool)."""
        if self._pool is None:
            return False
        try:
            distribution = self.registry.record(name).distribution.lower()
        except UnknownRewriterError:
            return False
        return distribution not in TRUSTED_DISTRIBUTIONS

    def _failure(self, name: str, exc: BaseException, *, when: str = "raised") -> str:
        """Log ``exc`` in full under a fresh error id; return what the caller may see."""
        error_id = uuid.uuid4().hex[:12]
        if isinstance(exc, _HostError) or (isinstance(exc, RewriterError) and self._trusted(name)):
            detail = _one_line(exc)  # built-in / host-registered RewriterErrors are written for the caller
        else:
            detail = f"error id {error_id}: the rewriter {when} an error (details in the server log only)"
        log.warning("rewriter %r %s [error id %s]: %s", name, when, error_id, _one_line(exc))
        trace = getattr(exc, "trace", "")
        if trace:
            log.debug("rewriter %r [error id %s] worker traceback:\n%s", name, error_id, trace)
        return detail

    def _trusted(self, name: str) -> bool:
        try:
            return self.registry.record(name).distribution.lower() in TRUSTED_DISTRIBUTIONS
        except UnknownRewriterError:
            return False

    @contextmanager
    def _runner(self, name: str, cls: type[Rewriter], parsed: Any, limit: float) -> Iterator[_Runner]:
        if not self.isolated(name):
            yield _ThreadRunner(self, name, cls(parsed), limit)
            return
        options = parsed.model_dump(mode="json") if isinstance(parsed, BaseModel) else dict(parsed or {})
        runner = _ProcessRunner(self, name, cls, options, limit)
        try:
            yield runner
        finally:
            runner.close()

    def _run_step(
        self,
        index: int,
        name: str,
        cls: type[Rewriter],
        parsed: Any,
        trace: str,
        context: RewriteContext,
        base_seed: int,
        limit: float,
        policy: OnError,
    ) -> tuple[str, StepResult]:
        version = self._version(name)
        started = time.perf_counter()
        wanted = normalize_answer(extract_final_answer(trace))
        rewriter: Rewriter | None = None  # the step's instance, once it has one in this process

        def result(guard: Guard, attempts: int, detail: str) -> StepResult:
            return StepResult(name, version, guard, attempts, time.perf_counter() - started, detail)

        def fall_back(guard: Guard, attempts: int, detail: str) -> tuple[str, StepResult]:
            """The step failed: its protected fallback when its rewriter has one, else its input."""
            protected = self._protected(name, cls, parsed, rewriter, trace, context, base_seed, index, wanted)
            if isinstance(protected, _NoProtection):
                if protected.why and protected.why not in detail:
                    detail = f"{detail}; {protected.why}"
                return trace, result(guard, attempts, detail)
            step = result(guard, attempts, f"{detail}; protected fallback")
            step.protected_fallback = True
            return protected, step

        def failed(attempts: int, exc: BaseException, when: str = "raised") -> tuple[str, StepResult]:
            """The step raised (or returned no string): RewriterFailed, or fall back."""
            detail = self._failure(name, exc, when=when)
            if policy == "raise":
                raise RewriterFailed(f"rewriter {name!r} failed ({detail})", name=name) from None
            return fall_back("error", attempts, detail)

        try:
            self.registry.get(name)
        except UnknownRewriterError as exc:  # quarantined since the pipeline was prepared
            if policy == "raise":
                raise RewriterFailed(str(exc), name=name) from None
            return fall_back("skipped", 0, str(exc))

        if self._protective(name, cls) and self.abandoned(name) >= self.max_abandoned:
            hung = f"{self.abandoned(name)} earlier attempts of this rewriter are still running"
            return fall_back("skipped", 0, hung)

        attempts = 0
        mismatch_detail = ""
        with self._runner(name, cls, parsed, limit) as runner:
            rewriter = getattr(runner, "rewriter", None)
            for attempt in range(self.retries + 1):
                attempts += 1
                seed = _attempt_seed(base_seed, index, name, attempt)
                ctx = context.for_attempt(attempt, seed=seed)
                try:
                    output = runner.rewrite(trace, ctx, seed)
                except _TimedOut as out:
                    detail = f"timed out after {limit:g} s"
                    if out.quarantined:
                        detail += f"; rewriter disabled after {self.max_abandoned} hung attempts"
                    log.warning("rewriter %r: %s (%s)", name, detail, out.how)
                    if policy == "raise":
                        raise RewriterTimeout(f"rewriter {name!r} {detail}", name=name) from None
                    return fall_back("timeout", attempts, detail)
                except Exception as exc:
                    return failed(attempts, exc)
                if not isinstance(output, str):
                    wrong = _HostError(f"rewrite() returned {type(output).__name__}, not str")
                    return failed(attempts, wrong)

                got = normalize_answer(extract_final_answer(output))
                if wanted is None:
                    guard: Guard = "no_answer"
                elif got == wanted:
                    guard = "preserved" if attempt == 0 else "preserved_after_retry"
                else:
                    mismatch_detail = f"answer changed ({got!r} instead of {wanted!r})"
                    continue
                if guard_applies(self.equation_guard, name):
                    check = check_rewrite(trace, output)  # intermediate-result guard
                    if not check.ok:
                        mismatch_detail = f"intermediate-result guard: {check.detail()}"
                        continue
                try:
                    runner.accepted(output, ctx, seed)
                except Exception as exc:
                    return failed(attempts, exc, when="failed to accept its output with")
                return output, result(guard, attempts, "; ".join(ctx.notes))
        return fall_back("fell_back", attempts, f"{mismatch_detail} on every attempt; kept the step's input")

    def _protective(self, name: str, cls: type[Rewriter]) -> bool:
        """Whether ``name`` has a protected fallback (overrides ``fallback`` and runs in this process)."""
        return cls.fallback is not Rewriter.fallback and not self.isolated(name)

    def _protected(
        self,
        name: str,
        cls: type[Rewriter],
        parsed: Any,
        rewriter: Rewriter | None,
        trace: str,
        context: RewriteContext,
        base_seed: int,
        index: int,
        wanted: str | None,
    ) -> str | _NoProtection:
        """The step's protected fallback for ``trace`` (module doc), or why there is none."""
        if not self._protective(name, cls):
            return _NoProtection("")  # no protected result: the input goes on (third-party: never in-process)
        if rewriter is None:
            rewriter = cls(parsed)
        seed = _attempt_seed(base_seed, index, name, -1)
        ctx = context.for_attempt(self.retries + 1, seed=seed)

        def broken(what: str) -> RewriterFailed:
            log.error("rewriter %r: protected fallback %s; failing the run", name, what)
            return RewriterFailed(f"rewriter {name!r} failed and its protected fallback {what}", name=name)

        try:
            output = rewriter.fallback(trace, ctx)
        except RewriterError as exc:
            log.warning("rewriter %r: no protected fallback (%s)", name, _one_line(exc))
            return _NoProtection(_one_line(exc) if self._trusted(name) else "")
        except Exception as exc:
            raise broken(f"raised {type(exc).__name__}") from None
        if not isinstance(output, str):
            raise broken(f"returned {type(output).__name__}, not str")
        got = normalize_answer(extract_final_answer(output))
        if wanted is not None and got != wanted:
            raise broken("changed the answer")
        try:
            rewriter.accepted(output, ctx)
        except Exception as exc:
            raise broken(f"could not be accepted ({type(exc).__name__})") from None
        return output


@dataclass(frozen=True)
class _NoProtection:
    """A step without a protected fallback (``why``: a caller-visible reason, or empty)."""

    why: str


class _HostError(TypeError):
    """A failure the host detected and described itself (safe to show)."""
