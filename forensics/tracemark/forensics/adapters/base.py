"""Suspect adapter base: errors, the query log, budgets, rate limits and retries with back-off.

Every adapter enforces a query budget (sampled completions; white-box logit reads of a local model are not
metered), a rate limit, retries with exponential back-off and time-outs, and records every query and its
response with SHA-256 digests (:attr:`SuspectAdapter.query_log`, and the ``on_query`` hook an
investigation uses to write each one to the ledger as it happens).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracemark.foundation.errors import Failed, InvalidInput, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

ENV_API_KEY = "TRACEMARK_SUSPECT_API_KEY"
ENV_TOKEN = "TRACEMARK_TOKEN"
SPEC_HELP = "hf:PATH | gguf:PATH | openai:URL#MODEL | tracemark:ADDR"


class SuspectError(Failed):
    """A suspect could not be queried as asked (a ``RuntimeError``)."""


class SuspectSpecError(InvalidInput):
    """A suspect spec (or an adapter option) is malformed or points at nothing usable (a ``ValueError``)."""


class BudgetExhausted(ResourceExhausted, SuspectError):
    """The query budget does not allow the requested number of sampled completions."""


class SuspectUnavailable(Unavailable, SuspectError):
    """The suspect kept failing (after retries with back-off) or timed out."""


class _Retryable(Exception):
    """Internal: a transient failure worth retrying (rate limited, 5xx, time-out, connection reset)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def sha256_hex(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Sample:
    """One sampled completion. ``tokens``/``token_logprobs``/``top_logprobs`` only when the suspect returns
    them (OpenAI-compatible endpoints with logprobs)."""

    text: str
    tokens: tuple[str, ...] | None = None
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[dict[str, float], ...] | None = None

    def as_dict(self) -> dict:
        out: dict[str, Any] = {"text": self.text}
        if self.tokens is not None:
            out["tokens"] = list(self.tokens)
            out["token_logprobs"] = list(self.token_logprobs or ())
        if self.top_logprobs is not None:
            out["top_logprobs"] = [dict(t) for t in self.top_logprobs]
        return out


@dataclass
class QueryLogEntry:
    """One query and its response (texts and SHA-256 digests)."""

    seq: int
    kind: str  # "sample" | "logprobs"
    prompt: str
    response: str
    prompt_sha256: str
    response_sha256: str
    seconds: float
    attempts: int = 1
    meta: dict = field(default_factory=dict)

    def as_dict(self, *, texts: bool = True) -> dict:
        out = {
            "seq": self.seq,
            "kind": self.kind,
            "prompt_sha256": self.prompt_sha256,
            "response_sha256": self.response_sha256,
            "seconds": round(self.seconds, 6),
            "attempts": self.attempts,
            "meta": self.meta,
        }
        if texts:
            out["prompt"] = self.prompt
            out["response"] = self.response
        return out


class SuspectAdapter:
    """Base class: budget, rate limit, retries with exponential back-off, time-outs and the query log.

    Subclasses implement :meth:`_sample` (one request for ``n`` completions) and :meth:`identity`.
    ``query_budget`` counts sampled completions (``None`` = unlimited); ``rate_limit`` is requests per
    second (``None`` = unlimited).
    """

    kind = "abstract"
    white_box = False
    max_n_per_request: int | None = None  # split larger ``n`` into several requests

    def __init__(
        self,
        spec: str,
        *,
        query_budget: int | None = None,
        rate_limit: float | None = None,
        max_retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 60.0,
        on_query: Callable[[QueryLogEntry], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if query_budget is not None and query_budget < 0:
            raise SuspectSpecError("query_budget must not be negative")
        if rate_limit is not None and rate_limit <= 0:
            raise SuspectSpecError("rate_limit must be positive (requests per second)")
        if max_retries < 0 or backoff < 0 or timeout <= 0:
            raise SuspectSpecError("max_retries and backoff must be >= 0, timeout > 0")
        self.spec = spec
        self.query_budget = query_budget
        self.rate_limit = rate_limit
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.on_query = on_query
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last_request = -math.inf
        self.queries_used = 0
        self.requests_sent = 0
        self.retries = 0
        self.backoff_waits: list[float] = []
        self.query_log: list[QueryLogEntry] = []
        self._seq = 0

    # --- public ---------------------------------------------------------------------------------
    def identity(self) -> dict:
        """Public identity of the suspect (no secrets)."""
        return {"kind": self.kind, "spec": self.spec}

    @property
    def budget_left(self) -> int | None:
        return None if self.query_budget is None else self.query_budget - self.queries_used

    def sample(
        self,
        prompt: str,
        *,
        n: int = 1,
        max_new_tokens: int = 8,
        temperature: float = 1.0,
        seed: int | None = None,
        meta: dict | None = None,
    ) -> list[Sample]:
        """``n`` sampled completions of ``prompt`` (counted against the budget, logged)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            left = self.budget_left
            if left is not None and n > left:
                raise BudgetExhausted(
                    f"query budget exhausted: {n} completion(s) asked, {left} of {self.query_budget} left"
                )
            self.queries_used += n  # reserved; refunded if the request finally fails
        samples: list[Sample] = []
        chunk = self.max_n_per_request or n
        done = 0
        try:
            while done < n:
                k = min(chunk, n - done)
                sub_seed = None if seed is None else seed + done
                start = time.perf_counter()
                got, attempts, extra = self._with_retries(
                    lambda k=k, sub_seed=sub_seed: self._sample(
                        prompt, k, max_new_tokens, temperature, sub_seed
                    )
                )
                done += k
                samples.extend(got)
                response = json.dumps([s.as_dict() for s in got], sort_keys=True, ensure_ascii=False)
                info = {
                    "n": k,
                    "max_new_tokens": max_new_tokens,
                    "temperature": temperature,
                    "seed": sub_seed,
                }
                self.record(
                    "sample",
                    prompt,
                    response,
                    meta={**info, **(extra or {}), **(meta or {})},
                    seconds=time.perf_counter() - start,
                    attempts=attempts,
                )
        except BaseException:
            with self._lock:
                self.queries_used -= n - done
            raise
        return samples

    def record(
        self,
        kind: str,
        prompt: str,
        response: str,
        *,
        meta: dict | None = None,
        seconds: float = 0.0,
        attempts: int = 1,
    ) -> QueryLogEntry:
        """Append a query to the log and hand it to ``on_query`` (the ledger writer)."""
        with self._lock:
            self._seq += 1
            entry = QueryLogEntry(
                seq=self._seq,
                kind=kind,
                prompt=prompt,
                response=response,
                prompt_sha256=sha256_hex(prompt),
                response_sha256=sha256_hex(response),
                seconds=seconds,
                attempts=attempts,
                meta=dict(meta or {}),
            )
            self.query_log.append(entry)
        if self.on_query is not None:
            self.on_query(entry)
        return entry

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections / memory."""

    def __enter__(self) -> SuspectAdapter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    # --- internals ------------------------------------------------------------------------------
    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        raise NotImplementedError

    def _throttle(self) -> None:
        if self.rate_limit is None:
            return
        with self._lock:
            interval = 1.0 / self.rate_limit
            wait = self._last_request + interval - time.monotonic()
            self._last_request = max(time.monotonic(), self._last_request + interval)
        if wait > 0:
            self._sleep(wait)

    def _with_retries(self, call: Callable[[], tuple[Any, dict]]) -> tuple[Any, int, dict]:
        attempt = 0
        while True:
            self._throttle()
            self.requests_sent += 1
            try:
                result, extra = call()
                return result, attempt + 1, extra
            except _Retryable as exc:
                if attempt >= self.max_retries:
                    raise SuspectUnavailable(
                        f"{self.kind} suspect failed after {attempt + 1} attempt(s): {exc}"
                    ) from None
                wait = min(self.backoff_max, self.backoff * (2**attempt))
                if exc.retry_after is not None:
                    wait = min(self.backoff_max, max(wait, exc.retry_after))
                self.retries += 1
                self.backoff_waits.append(wait)
                log.info("suspect %s: %s; retry %d in %.2fs", self.kind, exc, attempt + 1, wait)
                if wait > 0:
                    self._sleep(wait)
                attempt += 1
