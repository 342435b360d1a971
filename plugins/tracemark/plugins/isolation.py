"""Run third-party rewriter steps in worker processes that can be killed at their time limit.

A thread cannot be stopped in Python: a plugin step that hangs in a thread keeps its CPU until it ends by
itself. Steps of plugins not shipped by tracemark therefore run in a :class:`WorkerPool`: one process per
concurrent step (started with ``forkserver`` on Linux, ``spawn`` elsewhere, never a plain ``fork`` of the
threaded server), reused while it behaves and killed (SIGKILL) and replaced when a step exceeds its limit
or the process dies.

What a worker gets: the plugin class (imported there by module and qualified name; the parent's
``sys.path`` is sent with every task, so plugins found on a path added at run time import too), the
step's validated options, the trace and a :class:`~tracemark.plugins.api.RewriteContext` with the
problem, account, trace id, attempt, a seeded RNG, the host's watermark policy and, when the host has
one, an ``llm`` whose calls are forwarded to the parent's backend. Host objects that hold secrets or
large state (``signatures``, ``proxy``) are not sent: third-party plugins never see signature pairs.
Notes the plugin leaves come back with its output; an exception comes back as its class name, message
and traceback, which the pipeline logs under an error id and never returns to a caller.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tracemark.plugins.api import RewriteContext, Rewriter

log = logging.getLogger(__name__)

__all__ = ["PluginCrashed", "StepTask", "WorkerPool", "WorkerTimeout"]


class WorkerTimeout(Exception):
    """The step did not answer within its limit; its worker process was killed."""


@dataclass
class PluginCrashed(Exception):
    """The plugin raised (or its process died): what the worker reported, for the server log only."""

    kind: str
    message: str
    trace: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class StepTask:
    """One call into a worker: ``rewrite`` or ``accepted`` of one step's rewriter instance."""

    op: str  # "rewrite" | "accepted"
    step: str  # identifies the rewriter instance inside the worker for the step's attempts
    cls: tuple[str, str]  # (module, qualname)
    options: dict[str, Any]
    trace: str
    context: dict[str, Any]
    has_llm: bool


def class_ref(cls: type[Rewriter]) -> tuple[str, str]:
    return cls.__module__, cls.__qualname__


# -- the worker side --------------------------------------------------------------------------------
class _ForwardedLLM:
    """``context.llm`` inside a worker: each call is answered by the parent's backend."""

    def __init__(self, conn, model_id: str) -> None:
        self._conn = conn
        self.model_id = model_id

    def chat(self, messages, *, max_new_tokens=512, temperature=0.0, seed=None) -> str:
        _send_plain(
            self._conn,
            ["llm", messages, {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}],
        )
        kind, value = self._conn.recv()
        if kind != "llm_reply":
            raise RuntimeError(f"the host's LLM call failed ({value})")
        return value


def _send_plain(conn, message: list) -> None:
    """Worker → parent: JSON bytes only. A pickle from the worker would let a plugin run code in the
    server when the parent unpickles it (an object whose ``__reduce__`` calls ``exec``)."""
    conn.send_bytes(json.dumps(message, allow_nan=False).encode())


def _recv_plain(conn) -> list:
    """Parent side of :func:`_send_plain`."""
    message = json.loads(conn.recv_bytes())
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise ValueError("malformed message from a plugin worker")
    return message


def _load_class(ref: tuple[str, str]) -> type[Rewriter]:
    module, qualname = ref
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _serve_one(conn, instances: dict[str, Rewriter], task: StepTask, sys_path: list[str]) -> None:
    if sys.path != sys_path:
        sys.path[:] = sys_path
        importlib.invalidate_caches()
    cls = _load_class(task.cls)
    rewriter = instances.get(task.step)
    if rewriter is None:
        rewriter = instances[task.step] = cls(cls.parse_options(task.options))
    fields = dict(task.context)
    context = RewriteContext(
        problem=fields["problem"],
        account=fields["account"],
        trace_id=fields["trace_id"],
        rng=random.Random(fields["seed"]),
        llm=_ForwardedLLM(conn, fields["llm_model"]) if task.has_llm else None,
        watermark_policy=fields["watermark_policy"],
        attempt=fields["attempt"],
    )
    if task.op == "accepted":
        rewriter.accepted(task.trace, context)
        instances.pop(task.step, None)
        _send_plain(conn, ["ok", None, [str(n) for n in context.notes]])
        return
    output = rewriter.rewrite(task.trace, context)
    if not isinstance(output, str):
        raise TypeError(f"rewrite() returned {type(output).__name__}, not str")
    _send_plain(conn, ["ok", str(output), [str(n) for n in context.notes]])


def worker_main(conn) -> None:
    """Entry point of a worker process: answer tasks until the parent closes the pipe."""
    instances: dict[str, Rewriter] = {}
    if hasattr(os, "setsid"):
        os.setsid()  # own process group: killing the worker also kills whatever the plugin started
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "forget":
            instances.pop(message[1], None)
            continue
        _, task, sys_path = message
        try:
            _serve_one(conn, instances, task, sys_path)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which logs it
            instances.pop(task.step, None)
            detail = str(exc).strip()
            _send_plain(conn, ["raised", type(exc).__name__, detail, traceback.format_exc(limit=20)])
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return


# -- the parent side --------------------------------------------------------------------------------
class _Worker:
    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=worker_main, args=(child,), name="tracemark-plugin", daemon=True)
        self.process.start()
        child.close()
        self.steps: set[str] = set()
        self.broken = False  # timed out or died: never reused

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        try:
            # The worker and the plugin's own children; fails harmlessly when the worker is not a group
            # leader yet or the platform has no process groups.
            with contextlib.suppress(AttributeError, OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.kill()
            self.process.join(2.0)
        finally:
            self.conn.close()

    def call(self, task: StepTask, timeout: float, llm: Any) -> tuple[Any, list[str]]:
        """Send ``task``; answer forwarded LLM calls; return (output, notes) or raise."""
        deadline = time.monotonic() + timeout
        self.steps.add(task.step)
        try:
            self.conn.send(("task", task, list(sys.path)))
        except OSError:
            self.broken = True
            raise PluginCrashed("WorkerDied", "the worker process is gone") from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.conn.poll(remaining):
                self.broken = True
                raise WorkerTimeout(f"no answer within {timeout:g} s")
            try:
                message = _recv_plain(self.conn)
            except ValueError:
                self.broken = True
                raise PluginCrashed("ProtocolError", "the worker sent a malformed message") from None
            except (EOFError, OSError):
                self.broken = True
                self.process.join(1.0)
                code = self.process.exitcode
                raise PluginCrashed("WorkerDied", f"the worker process ended (exit code {code})") from None
            if message[0] == "ok":
                return message[1], list(message[2])
            if message[0] == "raised":
                raise PluginCrashed(message[1], message[2], message[3])
            if message[0] == "llm":
                self._answer_llm(llm, message[1], message[2], deadline, timeout)

    def _answer_llm(self, llm: Any, messages: list, kwargs: dict, deadline: float, timeout: float) -> None:
        """Answer one forwarded LLM call within the step's remaining time. A call still running at the
        deadline ends the step (the worker is killed); the host's generation itself is not cancelled."""
        answer: dict[str, Any] = {}

        def ask() -> None:
            try:
                answer["reply"] = llm.chat(messages, **kwargs)
            except Exception as exc:  # the plugin sees a failed call, not the host's message
                answer["error"] = type(exc).__name__

        asker = threading.Thread(target=ask, name="plugin-llm-call", daemon=True)
        asker.start()
        asker.join(max(0.0, deadline - time.monotonic()))
        if asker.is_alive():
            self.broken = True
            raise WorkerTimeout(f"no answer within {timeout:g} s (a forwarded LLM call was still running)")
        if "error" in answer:
            log.warning("LLM call forwarded from a plugin worker failed: %s", answer["error"])
            self.conn.send(("llm_error", answer["error"]))
        else:
            self.conn.send(("llm_reply", answer["reply"]))


class WorkerPool:
    """Up to ``max_workers`` plugin processes; :meth:`lease` hands one out for one step (all attempts).

    Thread-safe. Idle workers are kept (a fork from the forkserver costs tens of ms; see README for the
    measured overhead); a killed worker is replaced in the background so the next step finds one ready.
    """

    def __init__(self, *, max_workers: int = 4, start_method: str | None = None, warm: int = 0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        if method == "fork":
            raise ValueError("plugin workers must not be forked from the threaded server")
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(["tracemark.plugins.isolation"])
        self.max_workers = int(max_workers)
        self._idle: list[_Worker] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._closed = False
        self.started = 0
        self.killed = 0
        for _ in range(max(0, min(warm, max_workers))):
            self._replenish()

    def _replenish(self) -> None:
        """Start one idle worker in the background (bounded by max_workers)."""

        def start() -> None:
            try:
                worker = self._spawn()
            except Exception as exc:
                log.warning("could not start a plugin worker: %s", exc)
                return
            self._release(worker, healthy=True)

        with self._cond:
            if self._closed or len(self._idle) + self._busy >= self.max_workers:
                return
            self._busy += 1  # a worker being started counts against the bound
        threading.Thread(target=start, name="tracemark-plugin-start", daemon=True).start()

    @contextmanager
    def lease(self, wait_s: float) -> Iterator[_Worker]:
        """A worker for one step; raises :class:`WorkerTimeout` when none is free within ``wait_s``."""
        worker = self._acquire(wait_s)
        try:
            yield worker
        finally:
            self._release(worker, not worker.broken and worker.alive())

    def _acquire(self, wait_s: float) -> _Worker:
        deadline = time.monotonic() + wait_s
        start_one = False
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the plugin worker pool is closed")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        self._busy += 1
                        return worker
                    worker.kill()
                if len(self._idle) + self._busy < self.max_workers:
                    self._busy += 1
                    start_one = True
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerTimeout(f"no plugin worker free within {wait_s:g} s")
                self._cond.wait(remaining)
        assert start_one
        return self._spawn()  # outside the lock: starting a process takes a while

    def _spawn(self) -> _Worker:
        """Start a worker whose slot (``_busy``) is already reserved; the slot is freed if that fails."""
        try:
            worker = _Worker(self._ctx)
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.started += 1
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        for step in worker.steps:
            if healthy:
                try:
                    worker.conn.send(("forget", step))
                except OSError:
                    healthy = False
        worker.steps.clear()
        with self._cond:
            self._busy -= 1
            keep = healthy and not self._closed
            if keep:
                self._idle.append(worker)
            elif not healthy:
                self.killed += 1
            self._cond.notify()
        if not keep:
            worker.kill()
        if not healthy:
            self._replenish()

    def pids(self) -> list[int]:
        """Process ids of the idle workers (for tests and diagnostics)."""
        with self._cond:
            return [w.pid for w in self._idle if w.pid is not None]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
