"""Suspect adapters: the models an investigation queries.

Specs (:func:`parse_suspect`):

* ``hf:PATH``            a transformers model folder on disk (white-box: reads logits; can also sample)
* ``gguf:PATH``          a ``.gguf`` file, loaded by transformers (``gguf_file=``; white-box)
* ``openai:URL#MODEL``   an OpenAI-compatible HTTP endpoint (black-box; ``/v1/completions`` with ``n``
  samples, falling back to ``/v1/chat/completions``; returned logprobs are kept when offered). The API key
  comes from ``$TRACEMARK_SUSPECT_API_KEY`` and is never logged or stored.
* ``tracemark:ADDR``     a model served by a tracemark server (``TeacherService.Generate`` over gRPC,
  black-box), with the bearer token from ``$TRACEMARK_TOKEN``.

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
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_API_KEY = "TRACEMARK_SUSPECT_API_KEY"
ENV_TOKEN = "TRACEMARK_TOKEN"
SPEC_HELP = "hf:PATH | gguf:PATH | openai:URL#MODEL | tracemark:ADDR"
PACKED_TOKENS = 384  # tokens per packed batch of trie nodes (attention mask is PACKED_TOKENS x (prompt + it))
TREE_TOKENS = 600  # tokens per packed call of the trie (whole first-digit subtrees)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")
CHAT_EXTRA_TOKENS = 16
CHAT_CONTINUE_INSTRUCTION = (
    "Continue the user's text exactly where it stops. Reply with the continuation only, no commentary."
)


class SuspectError(RuntimeError):
    """A suspect could not be queried as asked."""


class SuspectSpecError(ValueError):
    """A suspect spec is malformed or points at nothing usable."""


class BudgetExhausted(SuspectError):
    """The query budget does not allow the requested number of sampled completions."""


class SuspectUnavailable(SuspectError):
    """The suspect kept failing (after retries with back-off) or timed out."""


class _Retryable(Exception):
    """Internal: a transient failure worth retrying (rate limited, 5xx, time-out, connection reset)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def sha256_hex(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


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
            raise ValueError("query_budget must not be negative")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (requests per second)")
        if max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("max_retries and backoff must be >= 0, timeout > 0")
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


# --- local models (white-box) ----------------------------------------------------------------------
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class LocalModelSuspect(SuspectAdapter):
    """A transformers model folder (``hf:``) or a ``.gguf`` file (``gguf:``) on disk: white-box.

    Exposes token-level log-probabilities (:meth:`next_token_logprobs`, :meth:`continuation_logprobs`)
    for exact scoring, and :meth:`sample` for black-box use of the same model.
    """

    white_box = True

    def __init__(
        self,
        spec: str,
        path: Path,
        *,
        gguf: bool = False,
        batch_size: int = 256,
        device: str = "auto",
        **kw: Any,
    ):
        super().__init__(spec, **kw)
        self.device = device  # "auto": CUDA when available, else CPU
        self.kind = "gguf" if gguf else "hf"
        self.path = Path(path)
        self.gguf = gguf
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None
        self._identity: dict | None = None
        self._load_lock = threading.Lock()
        self._prefix_cache: dict[tuple[int, ...], tuple[Any, Any]] = {}
        self._cache_name: str | None = None
        self._packed_ok: bool | None = None

    def identity(self) -> dict:
        if self._identity is None:
            files = (
                [self.path]
                if self.gguf
                else sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
            )
            digests = {
                (p.name if self.gguf else str(p.relative_to(self.path))): file_sha256(p) for p in files
            }
            combined = sha256_hex(json.dumps(digests, sort_keys=True))
            self._identity = {
                "kind": self.kind,
                "path": str(self.path.resolve()),
                "weight_files": digests,
                "weights_sha256": next(iter(digests.values())) if len(digests) == 1 else combined,
            }
        return dict(self._identity)

    # loading
    def _load(self) -> tuple[Any, Any]:
        with self._load_lock:
            if self._model is None:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                try:
                    if self.gguf:
                        folder, name = str(self.path.parent), self.path.name
                        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
                        model = AutoModelForCausalLM.from_pretrained(
                            folder, gguf_file=name, dtype=torch.float32
                        )
                    else:
                        tok = AutoTokenizer.from_pretrained(self.path)
                        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
                except (OSError, ValueError) as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise SuspectError(f"cannot load suspect model {self.path}: {first}") from None
                if self.device == "auto":
                    self.device = "cuda" if torch.cuda.is_available() else "cpu"
                model.to(self.device)
                model.eval()
                self._model, self._tokenizer = model, tok
        return self._model, self._tokenizer

    @property
    def model(self) -> Any:
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def chat_prefix(self, user: str) -> str | None:
        """The chat-template text up to where an assistant reply starts, or ``None`` without a template."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return None
        return tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def next_token_logprobs(
        self, sequences: Sequence[Sequence[int]], columns: Sequence[int] | None = None
    ) -> Any:
        """``log softmax`` of the next-token logits after each sequence: a float64 array ``[B, vocab]``
        (only the token ids in ``columns``, in that order, when given).

        Sequences are grouped by length and batched without padding, so every row is computed the same
        way regardless of what else is in the batch.
        """
        import numpy as np
        import torch

        model, _ = self._load()
        out: np.ndarray | None = None
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(sequences):
            if len(s) == 0:
                raise ValueError("cannot score an empty sequence")
            by_len.setdefault(len(s), []).append(i)
        with torch.inference_mode():
            for _, rows in sorted(by_len.items()):
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    ids = torch.tensor(
                        [list(sequences[i]) for i in chunk], dtype=torch.long, device=self.device
                    )
                    logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1, :].double()
                    lp = torch.log_softmax(logits, dim=-1)
                    if columns is not None:
                        lp = lp[:, list(columns)]
                    lp = lp.cpu().numpy()
                    if out is None:
                        out = np.empty((len(sequences), lp.shape[1]), dtype=np.float64)
                    out[chunk] = lp
        assert out is not None
        return out

    def _prefix_state(self, prefix: tuple[int, ...]) -> tuple[Any, Any]:
        """(KV cache, last-position log-probs) of ``prefix``; the last few prefixes are kept."""
        import torch

        hit = self._prefix_cache.get(prefix)
        if hit is not None:
            return hit
        model, _ = self._load()
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([list(prefix)], dtype=torch.long, device=self.device), use_cache=True
            )
        cache = out.get("cache")
        if cache is None:  # transformers before the `cache` rename
            cache = out.past_key_values
        lp = torch.log_softmax(out.logits[0, -1, :].double(), dim=-1)
        if len(self._prefix_cache) >= 8:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        self._prefix_cache[prefix] = (cache, lp)
        return cache, lp

    def next_token_logprobs_shared(
        self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], columns: Sequence[int] | None = None
    ) -> Any:
        """Like :meth:`next_token_logprobs` for ``prefix + suffix`` (all suffixes of one length), running the
        shared prefix once and reusing its KV cache (same numbers, several times faster)."""

        import numpy as np
        import torch

        if not suffixes:
            return np.zeros((0, len(columns) if columns is not None else 0))
        lengths = {len(x) for x in suffixes}
        if len(lengths) != 1:
            raise ValueError("suffixes must all have the same length")
        cache, last = self._prefix_state(tuple(prefix))
        cols = list(columns) if columns is not None else None
        if lengths == {0}:
            row = (last[cols] if cols is not None else last).cpu().numpy()
            return np.tile(row, (len(suffixes), 1))
        model, _ = self._load()
        arr = torch.tensor([list(x) for x in suffixes], dtype=torch.long, device=self.device)
        if self._packed_ok is None:  # check once that packed (tree-masked) batches match expanded caches
            probe = arr[: min(8, len(arr))]
            try:
                a = self._shared_packed(model, cache, len(prefix), probe)
                b = self._shared_expanded(model, cache, probe)
                self._packed_ok = bool(torch.allclose(a, b, atol=1e-4, rtol=0))
            except Exception:  # a model without 4-D mask support: use expanded caches
                self._packed_ok = False
        run = self._shared_packed if self._packed_ok else None
        parts = []
        step = max(1, PACKED_TOKENS // arr.shape[1]) if run else self.batch_size
        for start in range(0, len(arr), step):
            chunk = arr[start : start + step]
            lp = run(model, cache, len(prefix), chunk) if run else self._shared_expanded(model, cache, chunk)
            parts.append((lp[:, cols] if cols is not None else lp).cpu().numpy())
        return np.concatenate(parts, axis=0)

    def tree_logprobs(
        self, prefix: Sequence[int], branch_ids: Sequence[int], depth: int, columns: Sequence[int]
    ) -> list[Any]:
        """Next-token log-probs (``columns`` only) at every node of the complete ``len(branch_ids)``-ary
        tree of the given ``depth`` hanging after ``prefix``: level ``j`` is an array
        ``[branches**j, len(columns)]`` in lexicographic order (level 0 = right after the prefix).

        All nodes are packed into as few sequences as possible after the single prefix cache, with a
        tree attention mask (each node sees the prefix and its ancestors) and the positions of a plain
        sequence, so a 4-digit trie costs one forward pass over 1,110 tokens.
        """
        import copy

        import numpy as np
        import torch

        model, _ = self._load()
        cache, last = self._prefix_state(tuple(prefix))
        cols = list(columns)
        k = len(branch_ids)
        levels = [last[cols].cpu().numpy()[None, :]]
        if depth < 1:
            return levels
        # one subtree per first branch: nodes in BFS order, with their level and parent (local indices)
        sub_levels, sub_parent, sub_token = [], [], []
        frontier = [-1]
        for j in range(1, depth + 1):
            new = []
            for par in frontier:
                for b in range(k if j > 1 else 1):
                    sub_parent.append(par)
                    sub_levels.append(j)
                    sub_token.append(b)
                    new.append(len(sub_parent) - 1)
            frontier = new
        size = len(sub_parent)
        anc = np.zeros((size, size), dtype=bool)
        for i in range(size):
            anc[i, i] = True
            if sub_parent[i] >= 0:
                anc[i] |= anc[sub_parent[i]]
        per_call = max(1, TREE_TOKENS // size)
        outs = {j: np.empty((k**j, len(cols))) for j in range(1, depth + 1)}
        n_prefix = len(prefix)
        sub_levels_a = np.array(sub_levels)
        with torch.inference_mode():
            for first in range(0, k, per_call):
                firsts = list(range(first, min(k, first + per_call)))
                tokens, positions = [], []
                for f in firsts:
                    tokens.extend(
                        branch_ids[f] if lv == 1 else branch_ids[b]
                        for lv, b in zip(sub_levels, sub_token, strict=True)
                    )
                    positions.extend(n_prefix + lv - 1 for lv in sub_levels)
                n = len(tokens)
                mask = np.zeros((n, n_prefix + n), dtype=bool)
                mask[:, :n_prefix] = True
                for s_i in range(len(firsts)):
                    o = n_prefix + s_i * size
                    mask[s_i * size : (s_i + 1) * size, o : o + size] = anc
                kwargs = {self._cache_kwarg(): copy.deepcopy(cache)}
                logits = model(
                    input_ids=torch.tensor([tokens], dtype=torch.long, device=self.device),
                    position_ids=torch.tensor([positions], dtype=torch.long, device=self.device),
                    attention_mask=torch.from_numpy(mask)[None, None].to(self.device),
                    use_cache=True,
                    **kwargs,
                ).logits[0]
                lp = torch.log_softmax(logits.double(), dim=-1)[:, cols].cpu().numpy()
                for s_i, f in enumerate(firsts):
                    block = lp[s_i * size : (s_i + 1) * size]
                    for j in range(1, depth + 1):
                        rows = block[sub_levels_a == j]  # BFS order within a subtree = lexicographic
                        per = k ** (j - 1)
                        outs[j][f * per : (f + 1) * per] = rows
        return levels + [outs[j] for j in range(1, depth + 1)]

    def _shared_expanded(self, model: Any, cache: Any, ids: Any) -> Any:
        """Next-token log-probs after ``prefix + row`` for each row, with the prefix cache copied per row."""
        import copy

        import torch

        with torch.inference_mode():
            expanded = copy.deepcopy(cache)
            expanded.batch_repeat_interleave(ids.shape[0])
            kwargs = {self._cache_kwarg(): expanded}
            logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs).logits
            return torch.log_softmax(logits[:, -1, :].double(), dim=-1)

    def _shared_packed(self, model: Any, cache: Any, n_prefix: int, ids: Any) -> Any:
        """Same numbers as :meth:`_shared_expanded`, with all rows packed into one sequence after the single
        prefix cache and a block mask (each row sees the prefix and its own earlier tokens): no cache copies
        per row, several times faster for long prompts."""
        import copy

        import torch

        b, j = ids.shape
        n = b * j
        group = torch.arange(b).repeat_interleave(j)
        within = torch.arange(j).repeat(b)
        own = (group[:, None] == group[None, :]) & (within[None, :] <= within[:, None])
        mask = torch.cat([torch.ones(n, n_prefix, dtype=torch.bool), own], dim=1)[None, None].to(self.device)
        positions = (n_prefix + within).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            kwargs = {self._cache_kwarg(): copy.deepcopy(cache)}
            logits = model(
                input_ids=ids.reshape(1, n),
                position_ids=positions,
                attention_mask=mask,
                use_cache=True,
                **kwargs,
            ).logits
            last = logits[0].reshape(b, j, -1)[:, -1, :].double()
            return torch.log_softmax(last, dim=-1)

    def _cache_kwarg(self) -> str:
        if self._cache_name is None:
            import inspect

            params = inspect.signature(self.model.forward).parameters
            self._cache_name = "cache" if "cache" in params else "past_key_values"
        return self._cache_name

    def continuation_logprobs(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> Any:
        """``sum log p(continuation | prompt)`` for each token-id continuation (float64 array); the prompt
        runs once and its KV cache is shared."""
        import copy

        import numpy as np
        import torch

        model, _ = self._load()
        scores = np.zeros(len(continuations), dtype=np.float64)
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(continuations):
            by_len.setdefault(len(c), []).append(i)
        cache, last = self._prefix_state(tuple(prompt_ids))
        with torch.inference_mode():
            for length, rows in sorted(by_len.items()):
                if length == 0:
                    continue
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    ids = torch.tensor(
                        [list(continuations[i]) for i in chunk], dtype=torch.long, device=self.device
                    )
                    first = last[ids[:, 0]]  # log p(first token | prompt), from the prompt's own pass
                    if length == 1:
                        scores[chunk] = first.cpu().numpy()
                        continue
                    expanded = copy.deepcopy(cache)
                    expanded.batch_repeat_interleave(len(chunk))
                    kwargs = {self._cache_kwarg(): expanded}
                    logits = model(input_ids=ids[:, :-1], use_cache=True, **kwargs).logits.double()
                    lp = torch.log_softmax(logits, dim=-1)
                    rest = lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)
                    scores[chunk] = (first + rest).cpu().numpy()
        return scores

    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        import torch

        model, tok = self._load()
        ids = torch.tensor([self.encode(prompt)], dtype=torch.long, device=self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "pad_token_id": pad,
                "attention_mask": torch.ones_like(ids),
                "max_time": self.timeout,
            }
            if temperature <= 0:
                out = model.generate(ids, do_sample=False, **kwargs)
                texts = [tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)] * n
            else:
                out = model.generate(
                    ids,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=n,
                    **kwargs,
                )
                texts = [tok.decode(row[ids.shape[1] :].tolist(), skip_special_tokens=True) for row in out]
        return [Sample(text=t) for t in texts], {}

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._prefix_cache.clear()


# --- OpenAI-compatible endpoints (black-box) -------------------------------------------------------
def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class OpenAISuspect(SuspectAdapter):
    """An OpenAI-compatible endpoint: ``/v1/completions`` (raw continuation, ``n`` samples, ``logprobs``),
    falling back to ``/v1/chat/completions`` when completions are not served."""

    kind = "openai"
    RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(
        self,
        spec: str,
        base_url: str,
        model: str,
        *,
        api: str = "auto",
        logprobs: int | None = 5,
        transport: Any = None,
        **kw: Any,
    ) -> None:
        super().__init__(spec, **kw)
        if api not in ("auto", "completions", "chat"):
            raise ValueError("api must be auto, completions or chat")
        self.base_url = base_url
        self.model = model
        self.api = api
        self.logprobs = logprobs
        self._logprobs_refused = False
        import httpx

        headers = {"User-Agent": "tracemark-forensics"}
        key = os.environ.get(ENV_API_KEY, "").strip()
        self._has_key = bool(key)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=base_url, headers=headers, timeout=self.timeout, transport=transport
        )

    def identity(self) -> dict:
        return {
            "kind": self.kind,
            "endpoint": self.base_url,
            "model": self.model,
            "api": self.api,
            "authenticated": self._has_key,
        }

    def _post(self, path: str, body: dict) -> dict:
        import httpx

        try:
            resp = self._client.post(path, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"time-out after {self.timeout:g}s on {path}") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error on {path}: {type(exc).__name__}") from None
        if resp.status_code in self.RETRY_STATUS:
            raise _Retryable(f"HTTP {resp.status_code} on {path}", _retry_after(resp.headers))
        if resp.status_code in (404, 405, 501):
            raise _NotServed(f"HTTP {resp.status_code} on {path}")
        if resp.status_code == 400 and "logprobs" in body and not self._logprobs_refused:
            raise _LogprobsRefused(resp.text[:200])
        if resp.status_code >= 400:
            raise SuspectError(f"{path}: HTTP {resp.status_code}: {_error_text(resp)}")
        try:
            data = resp.json()
        except ValueError:
            raise SuspectError(f"{path}: the response is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise SuspectError(f"{path}: the response has no 'choices' list")
        return data

    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        if self.api in ("auto", "completions"):
            try:
                return self._completions(prompt, n, max_new_tokens, temperature, seed), {"api": "completions"}
            except _NotServed:
                if self.api == "completions":
                    raise SuspectError("the endpoint does not serve /v1/completions") from None
                log.info("suspect %s: /completions not served; using /chat/completions", self.base_url)
                self.api = "chat"
        try:
            return self._chat(prompt, n, max_new_tokens, temperature, seed), {"api": "chat"}
        except _NotServed:
            raise SuspectError(
                "the endpoint serves neither /v1/completions nor /v1/chat/completions"
            ) from None

    def _body(self, n: int, max_new_tokens: int, temperature: float, seed: int | None) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "max_tokens": max_new_tokens,
            "temperature": max(0.0, temperature),
        }
        if seed is not None:
            body["seed"] = int(seed)
        return body

    def _completions(self, prompt, n, max_new_tokens, temperature, seed) -> list[Sample]:  # noqa: ANN001
        body = {**self._body(n, max_new_tokens, temperature, seed), "prompt": prompt}
        if self.logprobs and not self._logprobs_refused:
            body["logprobs"] = int(self.logprobs)
        try:
            data = self._post("/completions", body)
        except _LogprobsRefused:
            self._logprobs_refused = True
            body.pop("logprobs", None)
            data = self._post("/completions", body)
        out = []
        for choice in data["choices"][:n]:
            text = choice.get("text")
            if not isinstance(text, str):
                raise SuspectError("/completions: a choice has no text")
            lp = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
            tokens = token_lps = tops = None
            if lp and isinstance(lp.get("tokens"), list) and isinstance(lp.get("token_logprobs"), list):
                tokens = tuple(str(t) for t in lp["tokens"])
                token_lps = tuple(float(x) if x is not None else -math.inf for x in lp["token_logprobs"])
                if isinstance(lp.get("top_logprobs"), list):
                    tops = tuple({str(k): float(v) for k, v in (t or {}).items()} for t in lp["top_logprobs"])
            out.append(Sample(text=text, tokens=tokens, token_logprobs=token_lps, top_logprobs=tops))
        return out

    def _chat(self, prompt, n, max_new_tokens, temperature, seed) -> list[Sample]:  # noqa: ANN001
        # chat models often echo the end of the prompt ("x137 = 4821"): leave room for that
        body = {
            **self._body(n, max_new_tokens + CHAT_EXTRA_TOKENS, temperature, seed),
            "messages": [
                {"role": "system", "content": CHAT_CONTINUE_INSTRUCTION},
                {"role": "user", "content": prompt},
            ],
        }
        if self.logprobs and not self._logprobs_refused:
            body["logprobs"] = True
            body["top_logprobs"] = int(self.logprobs)
        try:
            data = self._post("/chat/completions", body)
        except _LogprobsRefused:
            self._logprobs_refused = True
            body.pop("logprobs", None)
            body.pop("top_logprobs", None)
            data = self._post("/chat/completions", body)
        out = []
        for choice in data["choices"][:n]:
            msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            text = msg.get("content")
            if not isinstance(text, str):
                raise SuspectError("/chat/completions: a choice has no message content")
            content = (
                (choice.get("logprobs") or {}).get("content")
                if isinstance(choice.get("logprobs"), dict)
                else None
            )
            tokens = token_lps = tops = None
            if isinstance(content, list) and content:
                tokens = tuple(str(c.get("token", "")) for c in content)
                token_lps = tuple(float(c.get("logprob", -math.inf)) for c in content)
                tops = tuple(
                    {
                        str(t.get("token", "")): float(t.get("logprob", -math.inf))
                        for t in c.get("top_logprobs") or []
                    }
                    for c in content
                )
            out.append(Sample(text=text, tokens=tokens, token_logprobs=token_lps, top_logprobs=tops))
        return out

    def close(self) -> None:
        self._client.close()


class _NotServed(Exception):
    pass


class _LogprobsRefused(Exception):
    pass


def _error_text(resp: Any) -> str:
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]).splitlines()[0][:200]
        if isinstance(err, str):
            return err.splitlines()[0][:200]
    except ValueError:
        pass
    return (resp.text or "").strip().splitlines()[0][:200] if (resp.text or "").strip() else "no detail"


# --- tracemark-served models (black-box, gRPC) -----------------------------------------------------
class TracemarkSuspect(SuspectAdapter):
    """A model behind a tracemark server's ``TeacherService.Generate`` (bearer token ``$TRACEMARK_TOKEN``).

    The prompt is sent as the problem; each completion is one ``Generate`` call (seeded per sample).
    """

    kind = "tracemark"
    max_n_per_request = 1

    def __init__(self, spec: str, address: str, *, channel: Any = None, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.address = address
        self._channel = channel
        self._stub = None
        self._info: dict | None = None
        token = os.environ.get(ENV_TOKEN, "").strip()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _get_stub(self) -> Any:
        if self._stub is None:
            import grpc
            from tracemark.v1 import teacher_pb2_grpc

            if self._channel is None:
                self._channel = grpc.insecure_channel(self.address)
            self._stub = teacher_pb2_grpc.TeacherServiceStub(self._channel)
        return self._stub

    def identity(self) -> dict:
        if self._info is None:
            self._info = {}
            try:
                from tracemark.v1 import teacher_pb2

                info = self._get_stub().GetTeacherInfo(
                    teacher_pb2.GetTeacherInfoRequest(), timeout=self.timeout, metadata=self._metadata
                )
                self._info = {
                    "model_id": info.model_id,
                    "backend": info.backend,
                    "quantization": info.quantization,
                }
            except Exception as exc:  # identity is best-effort; queries report real failures
                self._info = {"info_error": type(exc).__name__}
        return {"kind": self.kind, "address": self.address, **self._info}

    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        import grpc
        from tracemark.v1 import teacher_pb2

        stub = self._get_stub()
        out: list[Sample] = []
        for i in range(n):
            params = teacher_pb2.GenerationParams(
                max_new_tokens=max_new_tokens,
                temperature=max(0.0, temperature),
                seed=(seed + i) % (2**63) if seed is not None else 0,
            )
            request = teacher_pb2.GenerateRequest(problem=prompt, params=params)
            try:
                reply = stub.Generate(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                retry = {
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.ABORTED,
                }
                detail = exc.details() if hasattr(exc, "details") else ""
                if code in retry:
                    raise _Retryable(f"gRPC {code.name}: {detail}") from None
                raise SuspectError(f"Generate failed: {code.name if code else 'error'}: {detail}") from None
            out.append(Sample(text=reply.trace))
        return out, {}

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None


# --- specs -------------------------------------------------------------------------------------------
_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_suspect(spec: str, **options: Any) -> SuspectAdapter:
    """Build the adapter for ``spec`` (see module doc); ``options`` go to the adapter (budget, rate limit,
    retries, time-out, ...). :class:`SuspectSpecError` for a malformed spec or a missing model."""
    if not isinstance(spec, str) or not spec.strip():
        raise SuspectSpecError(f"empty suspect spec; use {SPEC_HELP}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SuspectSpecError(f"suspect spec {spec!r} has no kind prefix; use {SPEC_HELP}")
    kind = kind.lower()
    if kind == "hf":
        path = Path(rest).expanduser()
        if not path.is_dir():
            raise SuspectSpecError(f"hf:{rest}: no model folder at {path}")
        if not (path / "config.json").is_file():
            raise SuspectSpecError(f"hf:{rest}: {path} has no config.json (not a transformers model folder)")
        return LocalModelSuspect(spec, path, gguf=False, **options)
    if kind == "gguf":
        path = Path(rest).expanduser()
        if path.suffix.lower() != ".gguf":
            raise SuspectSpecError(f"gguf:{rest}: expected a .gguf file")
        if not path.is_file():
            raise SuspectSpecError(f"gguf:{rest}: no such file")
        return LocalModelSuspect(spec, path, gguf=True, **options)
    if kind == "openai":
        url, hash_sep, model = rest.partition("#")
        if not hash_sep or not model.strip():
            raise SuspectSpecError(f"openai spec {spec!r} needs a model name: openai:URL#MODEL")
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise SuspectSpecError(f"openai spec {spec!r}: URL must start with http:// or https://")
        if not url.endswith("/v1"):
            url += "/v1"
        return OpenAISuspect(spec, url, model.strip(), **options)
    if kind == "tracemark":
        addr = rest.strip()
        if not _ADDR.match(addr):
            raise SuspectSpecError(f"tracemark spec {spec!r}: expected tracemark:HOST:PORT")
        if not 0 < int(addr.rsplit(":", 1)[1]) < 65536:
            raise SuspectSpecError(f"tracemark spec {spec!r}: port out of range")
        return TracemarkSuspect(spec, addr, **options)
    raise SuspectSpecError(f"unknown suspect kind {kind!r} in {spec!r}; use {SPEC_HELP}")
