"""A bounded queue that groups concurrent generation requests into batches for the teacher."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from tracemark.foundation.channel import ChannelSpec, GreenLists, Keyring
from tracemark.foundation.errors import ResourceExhausted, Unavailable
from tracemark.server.teacher.base import Generation, GenerationParams, Messages, TeacherBackend, TextCallback

log = logging.getLogger(__name__)

MAX_HOLD_S = 1.0  # a batch never waits longer than this to fill
HOLD_WINDOWS = 4  # a batch that keeps receiving requests may stay open this many windows
HOLD_FRACTION = 0.1  # ... nor longer than this share of the previous generate call (when above the window)
ADMISSION_POLL_S = 0.002  # how often a batch waiting on requests being admitted looks again


class QueueFull(ResourceExhausted, RuntimeError):
    """Too many requests are waiting; the caller should retry later."""


class QueueClosed(Unavailable, RuntimeError):
    """The queue is shutting down."""


class ChannelKeys:
    """A thread-safe view of a :class:`~tracemark.foundation.channel.Keyring` (the queue's worker and
    direct LLM calls share it): the ``[(green_lists, delta), ...]`` each decoded row gets."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._lock = threading.Lock()

    @property
    def spec(self) -> ChannelSpec:
        return self._keyring.spec

    def lists_for(self, account: str | None) -> list[tuple[GreenLists, float]]:
        """The provider key (every row) plus ``account``'s key (``None``/empty: provider key only)."""
        with self._lock:
            return self._keyring.lists_for(account or None)


@dataclass
class _Job:
    messages: Messages
    params: GenerationParams
    on_text: TextCallback | None
    account: str | None = None
    internal: bool = False
    future: Future = field(default_factory=Future)


class GenerationQueue:
    """Collects requests for up to ``window_s`` (or ``max_batch`` of them) and generates them together.

    Requests whose parameters allow sharing one ``generate`` call (see ``GenerationParams.batch_key``)
    are batched; others wait for their own turn. The queue holds at most ``max_queue`` jobs. With
    ``channel`` set, every row is decoded with the distributional channel of the account it was
    submitted for (a batch may mix accounts: the bias is per row).
    """

    def __init__(
        self,
        teacher: TeacherBackend,
        *,
        max_batch: int,
        window_s: float,
        max_queue: int,
        channel: ChannelKeys | None = None,
    ) -> None:
        self.teacher = teacher
        self.channel = channel
        self.max_batch = max_batch
        self.window_s = window_s
        self._jobs: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._held: list[_Job] = []
        self._closed = threading.Event()
        self._admit_lock = threading.Lock()
        self._arriving = 0  # requests between arrival and submit (see admitting)
        self._rewriting = 0  # requests between their generation and their reply (see rewriting)
        self._internal = 0  # jobs submitted from inside a rewrite (an LLM rewriter's call), not yet done
        self._last_generate_s = 0.0
        self.batches_run = 0
        self.largest_batch = 0
        self.batch_sizes: Counter[int] = Counter()  # rows per generate call: how many such calls
        self._worker = threading.Thread(target=self._run, name="generation-batcher", daemon=True)
        self._worker.start()

    def submit(
        self,
        messages: Messages,
        params: GenerationParams,
        on_text: TextCallback | None = None,
        account: str | None = None,
        internal: bool = False,
    ) -> Future:
        """Queue one conversation decoded for ``account`` (``None``: anonymous, the provider key only);
        the future resolves to a :class:`Generation`. ``internal``: submitted from inside a rewrite (an
        LLM rewriter's call), so that rewrite is not awaited as a coming request."""
        if self._closed.is_set():
            raise QueueClosed("the teacher is shutting down")
        job = _Job(messages, params, on_text, account, internal)
        if internal:
            with self._admit_lock:
                self._internal += 1
            job.future.add_done_callback(self._internal_done)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            if internal:
                job.future.cancel()
            raise QueueFull(f"generation queue is full ({self._jobs.maxsize} waiting)") from None
        return job.future

    def _internal_done(self, _future: Future) -> None:
        with self._admit_lock:
            self._internal -= 1

    def generate(
        self,
        messages: Messages,
        params: GenerationParams,
        timeout: float | None = None,
        account: str | None = None,
        internal: bool = False,
    ) -> Generation:
        return self.submit(messages, params, account=account, internal=internal).result(timeout=timeout)

    @property
    def depth(self) -> int:
        return self._jobs.qsize() + len(self._held)

    @contextmanager
    def admitting(self) -> Iterator[None]:
        """Wrap the work between a request's arrival and its :meth:`submit` (validation, ledger look-ups):
        a batch being formed waits for requests that are on their way (up to its hold limit)."""
        with self._admit_lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._admit_lock:
                self._arriving -= 1

    @contextmanager
    def rewriting(self) -> Iterator[None]:
        """Wrap the work between a request's generation and its reply (the rewrite pipeline, ledger
        writes): a client served by a finished batch usually sends its next request right after, so a
        batch being formed waits for these too (up to its hold limit). Generation never waits on a rewrite
        beyond that limit."""
        with self._admit_lock:
            self._rewriting += 1
        try:
            yield
        finally:
            with self._admit_lock:
                self._rewriting -= 1

    def _expecting(self) -> bool:
        """Whether more requests are on their way: being admitted, or replies being rewritten whose
        clients may come back (less the rewrites now waiting on a queued LLM call of their own)."""
        with self._admit_lock:
            return self._arriving > 0 or self._rewriting > self._internal

    def _hold_s(self) -> float:
        """How long a batch may keep filling while arrivals continue: a few windows, or a tenth of the last
        generate call when that is longer (the clients of a finished batch come back together, after their
        rewriting), at most 1 s. A batch with no arrival for ``window_s`` starts at once."""
        return min(MAX_HOLD_S, max(HOLD_WINDOWS * self.window_s, HOLD_FRACTION * self._last_generate_s))

    def _next_batch(self) -> list[_Job]:
        if self._held:
            first = self._held.pop(0)
        else:
            try:
                first = self._jobs.get(timeout=0.2)
            except queue.Empty:
                return []
        batch = [first]
        key = first.params.batch_key()
        # Jobs held back earlier that fit this batch go first, in arrival order.
        for job in list(self._held):
            if len(batch) < self.max_batch and job.params.batch_key() == key:
                self._held.remove(job)
                batch.append(job)
        # Adaptive window: wait ``window_s`` after the latest arrival (so a stream of arrivals keeps the
        # batch open) or while requests are being admitted, never past the hold limit.
        now = time.monotonic()
        limit = now + self._hold_s()
        deadline = now + self.window_s
        while len(batch) < self.max_batch:
            now = time.monotonic()
            if now >= limit or (now >= deadline and not self._expecting()):
                break
            wait = min(limit, deadline if deadline > now else now + ADMISSION_POLL_S) - now
            try:
                job = self._jobs.get(timeout=max(wait, 0.0005))
            except queue.Empty:
                continue
            deadline = time.monotonic() + self.window_s
            if job.params.batch_key() == key:
                batch.append(job)
            else:
                self._held.append(job)
        return batch

    def _run(self) -> None:
        while True:
            if self._closed.is_set() and not self._held and self._jobs.empty():
                return
            batch = self._next_batch()
            if not batch:
                continue
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            params = GenerationParams(
                max_new_tokens=max(j.params.max_new_tokens for j in batch),
                temperature=batch[0].params.temperature,
                seed=batch[0].params.seed,
            )
            extra = {}
            start = time.monotonic()
            try:
                if self.channel is not None:  # only then: backends written before the channel keep working
                    extra["channels"] = [self.channel.lists_for(j.account) for j in batch]
                results = self.teacher.generate_batch(
                    [j.messages for j in batch], params, [j.on_text for j in batch], **extra
                )
            except Exception as exc:  # every waiting caller gets the error, the worker keeps going
                log.error("batch of %d failed: %s", len(batch), type(exc).__name__)
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self._last_generate_s = time.monotonic() - start
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self.batch_sizes[len(batch)] += 1
            for job, result in zip(batch, results):
                job.future.set_result(result)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, let queued jobs finish (up to ``timeout``), then stop the worker."""
        self._closed.set()
        self._worker.join(timeout)
