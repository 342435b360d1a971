"""A small *proxy student* for the gradient-based rewriters and antidistillation sampling.

* :func:`load_proxy` loads any local causal LM folder (safetensors only; default: the embedded SmolLM2
  model) once per (path, device) and caches it process-wide (thread-safe). The model is frozen
  (``requires_grad=False``): rewriters take gradients with respect to *inputs* only, so one cached model
  can serve several threads.
* :func:`protected_mask` marks answer-bearing tokens that no rewriter may touch.
* :class:`TraceSearch` is the machinery both token-substitution rewriters share: the encoded example, the
  editable positions, the candidate vocabulary filter, the budget, the perplexity cap and a greedy
  "confirm with real forward passes, then apply" step.

An example is encoded the way ``tracemark.experiments.distill.encode_example`` encodes it for a student: the
problem is the user turn of the chat template, the trace the assistant turn, and the loss is the mean
cross-entropy over the trace tokens and the end-of-turn marker.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from tracemark.foundation.models.device import DeviceError, resolve_device
from tracemark.foundation.models.embedded import ensure_embedded_model
from tracemark.foundation.models.gguf import gguf_to_folder
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError

log = logging.getLogger(__name__)

__all__ = [
    "EncodedTrace",
    "ProxyError",
    "ProxyRewriter",
    "ProxyRewriterOptions",
    "ProxyStudent",
    "SearchLimits",
    "TraceSearch",
    "clear_proxy_cache",
    "load_proxy",
    "protected_mask",
    "protected_spans",
]


class ProxyError(ValueError):
    """The proxy student cannot be loaded or cannot encode the input (one-line message)."""


# -- protected (answer-bearing) spans ------------------------------------------------------------------
_WORDISH = re.compile(r"[\w.,$%\-]+")  # linear: a run of word-ish characters (a number with its unit)
_DIGIT = re.compile(r"\d")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_BOXED = re.compile(r"\\boxed\s*\{")
_QUANTITY_WORDS = (
    r"zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?|"
    r"thousands?|millions?|billions?|half|halves|twice|thrice|once|double|doubled|triple|tripled|"
    r"quadruple|quarters?|thirds?|fourths?|fifths?|tenths?|dozens?|percent|pairs?|first|second|third|"
    r"none|no|not|all|each|every|per|more|less|fewer|than"
)
_OPERATOR_WORDS = r"[xX]|times|plus|minus|divided\s+by|multiplied\s+by|over|by|and|to|from"
_NUMBER_WORD = re.compile(rf"\b(?:{_QUANTITY_WORDS})\b", re.IGNORECASE)
# replacement tokens must not introduce quantities or operators either
_QUANTITY_PIECE = re.compile(rf"^(?:{_QUANTITY_WORDS}|{_OPERATOR_WORDS}|divided|multiplied)$", re.IGNORECASE)
_OPERATOR_WORD = re.compile(rf"(?<=[\d)%])\s*(?:{_OPERATOR_WORDS})\s*(?=[\d($.])")


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``text`` that carry the answer and must stay unchanged.

    Every run of word-ish characters containing a digit (numbers, ``x137``, ``24%``, ``$5.50``), number
    and quantity words (``five``, ``half``, ``twice``, ``per``, ``more``, ``than``, ``not``...), operator
    words between numbers (``0.2 x 50``, ``3 times 4``), LaTeX commands, ``\\boxed{...}`` (nested braces
    honoured), ``<<...>>`` calculator annotations, ``####`` and everything after it, and the final
    non-empty line.
    """
    spans = [m.span() for m in _WORDISH.finditer(text) if _DIGIT.search(m.group())]
    spans += [m.span() for m in _LATEX_COMMAND.finditer(text)]
    spans += [m.span() for m in _NUMBER_WORD.finditer(text)]
    spans += [m.span() for m in _OPERATOR_WORD.finditer(text)]
    spans += [m.span() for m in _ANNOTATION.finditer(text)]
    for match in _BOXED.finditer(text):
        depth, end = 1, len(text)
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                end = i + 1
                break
        spans.append((match.start(), end))
    hashes = text.find("####")
    if hashes >= 0:
        spans.append((hashes, len(text)))
    stripped = text.rstrip()
    if stripped:
        spans.append((stripped.rfind("\n") + 1, len(text)))
    return sorted(spans)


def protected_mask(text: str, token_offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """For each token (its ``(start, end)`` character offsets in ``text``), whether it overlaps an
    answer-bearing span (:func:`protected_spans`). Empty-span tokens (specials) count as protected."""
    marked = bytearray(len(text) + 1)
    for start, end in protected_spans(text):
        marked[start:end] = b"\x01" * (end - start)
    out = []
    for start, end in token_offsets:
        out.append(end <= start or any(marked[start:end]))
    return out


# -- the proxy student --------------------------------------------------------------------------------
@dataclass
class EncodedTrace:
    """One (problem, trace) example: prompt / trace / end-of-turn ids and the trace tokens' offsets."""

    prompt_ids: list[int]
    trace_ids: list[int]
    suffix_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each trace token in the trace text

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.trace_ids + self.suffix_ids

    @property
    def label_start(self) -> int:
        """Index of the first labelled (trace) token in :attr:`input_ids`."""
        return len(self.prompt_ids)


@dataclass
class _Vocab:
    pieces: list[str]  # text of each token id as it appears in a decoded string
    word_class: list[tuple[bool, bool] | None]  # (leading space, capitalised) of word pieces, else None
    masks: dict[tuple[tuple[bool, bool], int | None], torch.Tensor] = field(default_factory=dict)


class ProxyStudent:
    """A frozen causal LM and its tokenizer, with the helpers the rewriters and ADS need."""

    def __init__(self, model: Any, tokenizer: Any, path: Path, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.device = device
        self._vocab: _Vocab | None = None
        self._lock = threading.Lock()

    def cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """``{"cache": cache}`` or ``{"past_key_values": cache}``, whichever this transformers takes."""
        if cache is None:
            return {}
        return {self._cache_arg: cache}

    @functools.cached_property
    def _cache_arg(self) -> str:
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    # -- encoding ---------------------------------------------------------------------------------
    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_matrix.shape[0])

    def _chat(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if kwargs.get("add_generation_prompt") else "")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_trace_text(self, trace: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``trace`` alone and their character offsets."""
        try:
            enc = self.tokenizer(trace, add_special_tokens=False, return_offsets_mapping=True)
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        except (NotImplementedError, TypeError, ValueError):  # slow tokenizer: offsets by prefix decoding
            ids = self._ids(trace)
            offsets, previous = [], 0
            for i in range(len(ids)):
                upto = len(self.tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False))
                offsets.append((previous, upto))
                previous = upto
            return ids, offsets

    def encode(self, problem: str, trace: str) -> EncodedTrace:
        """Encode like ``bench.distill.encode_example``: chat prompt, the trace, the end-of-turn marker."""
        messages = [{"role": "user", "content": problem}]
        prompt_text = self._chat(messages, add_generation_prompt=True)
        suffix_text = self.tokenizer.eos_token or ""
        if getattr(self.tokenizer, "chat_template", None):
            full = self._chat([*messages, {"role": "assistant", "content": trace}])
            if full.startswith(prompt_text):
                completion = full[len(prompt_text) :].rstrip()
                if completion.startswith(trace):
                    suffix_text = completion[len(trace) :]
        trace_ids, offsets = self.encode_trace_text(trace)
        return EncodedTrace(self._ids(prompt_text), trace_ids, self._ids(suffix_text), offsets)

    # -- vocabulary filter ------------------------------------------------------------------------
    def vocab(self) -> _Vocab:
        """Decoded pieces and word-piece classes of every token id (computed once)."""
        with self._lock:
            if self._vocab is None:
                self._vocab = self._build_vocab()
            return self._vocab

    def _build_vocab(self) -> _Vocab:
        n = min(len(self.tokenizer), self.vocab_size)
        pieces = self.tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        raw = self.tokenizer.convert_ids_to_tokens(list(range(n)))
        special = set(self.tokenizer.all_special_ids or [])
        classes: list[tuple[bool, bool] | None] = []
        for i, (piece, token) in enumerate(zip(pieces, raw, strict=True)):
            if isinstance(token, str) and token.startswith("\u2581") and not piece.startswith(" "):
                piece = " " + piece  # SentencePiece drops the leading space of a lone piece
                pieces[i] = piece
            lead = piece.startswith(" ")
            word = piece[1:] if lead else piece
            ok = i not in special and word.isascii() and word.isalpha() and not _QUANTITY_PIECE.match(word)
            classes.append((lead, word[0].isupper()) if ok else None)
        return _Vocab(pieces=pieces, word_class=classes)

    def candidate_mask(self, word_class: tuple[bool, bool], top_k: int | None = None) -> torch.Tensor:
        """Boolean mask over the model's vocabulary: alphabetic word pieces of ``word_class`` (same
        leading-space and capitalisation), restricted to the ``top_k`` lowest ids among all word pieces
        when given (for BPE vocabularies id order follows merge order, i.e. frequent pieces first)."""
        vocab = self.vocab()
        key = (word_class, top_k)
        with self._lock:
            mask = vocab.masks.get(key)
            if mask is None:
                words = [i for i, cls in enumerate(vocab.word_class) if cls is not None]
                if top_k is not None:
                    words = words[:top_k]
                chosen = [i for i in words if vocab.word_class[i] == word_class]
                mask = torch.zeros(self.vocab_size, dtype=torch.bool)
                mask[torch.tensor(chosen, dtype=torch.long)] = True
                vocab.masks[key] = mask
            return mask

    # -- losses -----------------------------------------------------------------------------------
    def losses(self, sequences: torch.Tensor, label_start: int, *, max_logit_floats: int = 30_000_000):
        """Mean cross-entropy of tokens ``label_start:`` of each row of ``sequences`` (equal lengths)."""
        sequences = sequences.to(self.device)
        rows, width = sequences.shape
        keep = width - label_start + 1
        chunk = max(1, max_logit_floats // max(1, keep * self.vocab_size))
        out = []
        with torch.no_grad():
            for lo in range(0, rows, chunk):
                batch = sequences[lo : lo + chunk]
                logits = self.model(input_ids=batch, logits_to_keep=keep).logits[:, :-1].float()
                targets = batch[:, label_start:]
                ce = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                )
                out.append(ce.view(batch.shape[0], -1).mean(dim=1))
        return torch.cat(out).cpu()

    def loss_of(self, problem: str, trace: str) -> float:
        """The proxy's mean loss on ``trace`` as the answer to ``problem``."""
        enc = self.encode(problem, trace)
        return float(self.losses(torch.tensor([enc.input_ids]), enc.label_start)[0])


_CACHE: dict[tuple[str, str], ProxyStudent] = {}
_CACHE_LOCK = threading.Lock()
_PATH_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def _resolve_path(path: str | Path | None) -> Path:
    if path is None or str(path) == "":
        try:
            return ensure_embedded_model()
        except Exception as exc:  # package missing, conversion failed
            raise ProxyError(f"no proxy model given and the embedded model is unavailable: {exc}") from exc
    resolved = Path(path).expanduser()
    if resolved.suffix == ".gguf" and resolved.is_file():
        return gguf_to_folder(resolved)
    if not (resolved / "config.json").is_file():
        raise ProxyError(f"proxy model folder not found or has no config.json: {resolved}")
    return resolved.resolve()


def load_proxy(path: str | Path | None = None, *, device: str = "cpu") -> ProxyStudent:
    """The proxy student at ``path`` (a model folder or .gguf; None: the embedded model), fp32, frozen,
    loaded once per (path, device) and shared. Only safetensors weights are accepted (no pickles)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _resolve_path(path)
    try:
        dev = resolve_device(device, what="proxy")
    except DeviceError as exc:
        raise ProxyError(str(exc)) from None
    key = (str(folder), dev)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        lock = _PATH_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        start = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        except Exception as exc:
            raise ProxyError(
                f"could not load proxy model from {folder}: {type(exc).__name__}: {exc}"
            ) from exc
        model.to(dev).eval().requires_grad_(False)
        proxy = ProxyStudent(model, tokenizer, folder, dev)
        log.info("loaded proxy student %s on %s in %.1f s", folder, dev, time.perf_counter() - start)
        with _CACHE_LOCK:
            _CACHE[key] = proxy
        return proxy


def clear_proxy_cache() -> None:
    """Forget every cached proxy (tests, memory pressure)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _PATH_LOCKS.clear()


def proxy_for(context_services: dict[str, Any], path: str | None, device: str = "cpu") -> ProxyStudent:
    """The host's proxy (``services["proxy_student"]``) when no path is asked for, else a loaded one."""
    injected = context_services.get("proxy_student")
    if path is None and isinstance(injected, ProxyStudent):
        return injected
    return load_proxy(path, device=device)


# -- shared search machinery --------------------------------------------------------------------------
@dataclass
class SearchLimits:
    """Budget and constraints of one rewrite."""

    max_fraction: float = 0.1
    confirm_top: int = 16
    swaps_per_round: int | None = None
    ppl_cap_ratio: float | None = None
    vocab_top_k: int | None = None
    time_budget_s: float = 20.0
    max_tokens: int = 2048
    whole_words: bool = True
    fluency_top_k: int | None = None
    round_share: float = 0.25  # default swaps per round, as a share of the budget


KV = list[tuple[torch.Tensor, torch.Tensor]]


def output_cache(output: Any) -> Any:
    """The cache a model call returned (``cache`` in recent transformers, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cache_tensors(cache: Any) -> KV:
    """Per-layer (keys, values) of a transformers cache, detached."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys.detach(), layer.values.detach()) for layer in layers]
    return [(k.detach(), v.detach()) for k, v in cache]  # legacy tuple caches


def make_cache(kv: KV, upto: int, batch: int) -> Any:
    """A fresh DynamicCache holding the first ``upto`` positions of ``kv`` repeated ``batch`` times."""
    from transformers import DynamicCache

    return DynamicCache(
        ddp_cache_data=[
            (
                k[:1, :, :upto].expand(batch, -1, -1, -1).contiguous(),
                v[:1, :, :upto].expand(batch, -1, -1, -1).contiguous(),
            )
            for k, v in kv
        ]
    )


class TraceSearch:
    """One rewrite in progress: the encoded example, current token ids, what changed, and the losses.

    Substitutions are one token for one token, so every candidate sequence has the original length;
    a candidate is only considered when decoding and re-encoding the trace gives the same ids back
    (the student sees exactly the tokens that were scored). Candidate losses are computed exactly but
    cheaply: the keys/values of the unchanged prefix of the current sequence are reused and only the
    positions from the first changed token on are recomputed.
    """

    def __init__(self, proxy: ProxyStudent, problem: str, trace: str, limits: SearchLimits) -> None:
        self.proxy = proxy
        self.limits = limits
        self.trace = trace
        self.started = time.perf_counter()
        enc = proxy.encode(problem, trace)
        if len(enc.trace_ids) > limits.max_tokens:
            raise ProxyError(
                f"trace has {len(enc.trace_ids)} tokens, more than max_tokens={limits.max_tokens}"
            )
        if not enc.trace_ids:
            raise ProxyError("empty trace")
        if not enc.prompt_ids:
            raise ProxyError("the proxy's prompt is empty")
        self.enc = enc
        self.original = list(enc.trace_ids)
        self.current = list(enc.trace_ids)
        self.protected = protected_mask(trace, enc.offsets)
        vocab = proxy.vocab()
        self.classes = [vocab.word_class[t] if t < len(vocab.word_class) else None for t in enc.trace_ids]
        self.editable = [c is not None and not p for c, p in zip(self.classes, self.protected, strict=True)]
        if limits.whole_words:
            for i, (start, end) in enumerate(enc.offsets):
                glued_before = start > 0 and trace[start].isalpha() and trace[start - 1].isalpha()
                glued_after = end < len(trace) and trace[end].isalpha()
                if glued_before or glued_after:
                    self.editable[i] = False
        self.budget = int(math.floor(limits.max_fraction * len(self.original)))
        self.changed: set[int] = set()
        self.forward_tokens = 0  # token positions run through the proxy (for cost reports)
        self.rounds = 0
        self._round_started: float | None = None
        self._longest_round = 0.0
        with torch.no_grad():
            out = proxy.model(
                input_ids=torch.tensor([enc.prompt_ids], device=proxy.device),
                use_cache=True,
                logits_to_keep=1,
            )
        self.forward_tokens += len(enc.prompt_ids)
        self.prompt_kv = cache_tensors(output_cache(out))
        self.prompt_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts trace token 0
        self._kv: KV | None = None  # keys/values of the current full sequence
        self._ce: torch.Tensor | None = None  # per-label cross-entropy of the current sequence
        self._plausible = torch.zeros(0, dtype=torch.bool)
        self.base_loss = self.current_loss()
        self.loss = self.base_loss
        cap = limits.ppl_cap_ratio
        self.max_loss = self.base_loss + math.log(cap) if cap is not None else math.inf

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def prefix_len(self) -> int:
        return len(self.enc.prompt_ids)

    @property
    def n_labels(self) -> int:
        return len(self.current) + len(self.enc.suffix_ids)

    def expired(self) -> bool:
        return time.perf_counter() - self.started > self.limits.time_budget_s

    def begin_round(self) -> None:
        now = time.perf_counter()
        if self._round_started is not None:
            self._longest_round = max(self._longest_round, now - self._round_started)
        self._round_started = now
        self.rounds += 1

    def round_fits(self) -> bool:
        """Whether another round (as long as the longest so far) ends within the time budget."""
        if self._round_started is not None:
            self._longest_round = max(self._longest_round, time.perf_counter() - self._round_started)
        elapsed = time.perf_counter() - self.started
        return elapsed + self._longest_round <= self.limits.time_budget_s

    def budget_left(self) -> int:
        return self.budget - len(self.changed)

    def free_positions(self) -> list[int]:
        """Trace positions that may still change (editable, not changed yet)."""
        return [i for i, ok in enumerate(self.editable) if ok and i not in self.changed]

    def sequence(self, trace_ids: Sequence[int]) -> list[int]:
        return self.enc.prompt_ids + list(trace_ids) + self.enc.suffix_ids

    def completion_ids(self) -> list[int]:
        """Current trace ids followed by the end-of-turn ids (everything after the prompt)."""
        return list(self.current) + self.enc.suffix_ids

    def forward_completion(self, *, input_ids: torch.Tensor | None = None, inputs_embeds=None):
        """Run the proxy on the completion (ids or embeddings, batch 1) on top of the cached prompt.

        Returns ``(per-label cross-entropy, output)``; autograd flows when the caller enables it."""
        cache = make_cache(self.prompt_kv, self.prefix_len, 1)
        out = self.proxy.model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=True, **self.proxy.cache_kwargs(cache)
        )
        self.forward_tokens += self.n_labels
        targets = torch.tensor(self.completion_ids(), device=self.proxy.device)
        logits = out.logits[0].float()
        first = -self.prompt_logp[targets[0]].reshape(1)
        rest = torch.nn.functional.cross_entropy(logits[:-1], targets[1:], reduction="none")
        return torch.cat([first, rest]), out

    def adopt(self, ce: torch.Tensor, out: Any) -> None:
        """Remember a pass over the *current* sequence (its keys/values, per-label losses and, with
        ``fluency_top_k``, the tokens the proxy finds plausible at each trace position)."""
        self._ce = ce.detach()
        self._kv = cache_tensors(output_cache(out))
        k = self.limits.fluency_top_k
        if k is not None:
            with torch.no_grad():
                logits = out.logits[0, : len(self.current) - 1].detach().float()
                predictors = torch.cat([self.prompt_logp.unsqueeze(0), logits])
                top = predictors.topk(min(k, predictors.shape[-1]), dim=-1).indices
                self._plausible = torch.zeros(predictors.shape, dtype=torch.bool).to(top.device)
                self._plausible.scatter_(1, top, True)

    def plausible(self, position: int) -> torch.Tensor | None:
        """With ``fluency_top_k``: mask of the proxy's top-k next tokens at ``position`` (current pass)."""
        if self.limits.fluency_top_k is None:
            return None
        self.current_loss()
        return self._plausible[position]

    def current_loss(self) -> float:
        if self._ce is None:
            with torch.no_grad():
                ids = torch.tensor([self.completion_ids()], device=self.proxy.device)
                ce, out = self.forward_completion(input_ids=ids)
            self.adopt(ce, out)
        assert self._ce is not None
        return float(self._ce.mean())

    def loss_of_trace_ids(self, rows: Sequence[Sequence[int]], *, max_logit_floats: int = 30_000_000):
        """Exact mean loss of each candidate trace (same length as the current one)."""
        self.current_loss()  # makes sure the current pass is cached
        assert self._kv is not None and self._ce is not None
        prefix, n_labels = self.prefix_len, self.n_labels
        results: dict[int, float] = {}
        firsts = []
        for row in rows:
            diff = [i for i, (a, b) in enumerate(zip(row, self.current, strict=True)) if a != b]
            firsts.append((prefix + diff[0]) if diff else prefix + len(row))
        order = sorted(range(len(rows)), key=lambda r: firsts[r])
        vocab = self.proxy.vocab_size
        i = 0
        with torch.no_grad():
            while i < len(order):
                start = max(firsts[order[i]] - 1, prefix - 1)  # recompute from the token before
                width = prefix + n_labels - start
                chunk = max(1, max_logit_floats // max(1, width * vocab))
                group = order[i : i + chunk]
                i += len(group)
                seqs = torch.tensor([self.sequence(rows[r]) for r in group], device=self.proxy.device)
                cache = make_cache(self._kv, start, len(group)) if start > 0 else None
                out = self.proxy.model(
                    input_ids=seqs[:, start:], use_cache=cache is not None, **self.proxy.cache_kwargs(cache)
                )
                self.forward_tokens += len(group) * width
                logits = out.logits[:, :-1].float()  # predict positions start+1 .. end
                targets = seqs[:, start + 1 :]
                ce = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).view(len(group), -1)
                kept = float(self._ce[: start - prefix + 1].sum())  # labels prefix .. start are unchanged
                for row_index, total in zip(group, ce.sum(dim=1).tolist(), strict=True):
                    results[row_index] = (kept + total) / n_labels
        return [results[r] for r in range(len(rows))]

    def allowed(self, position: int) -> torch.Tensor:
        """Replacement tokens allowed at ``position`` (vocabulary filter, and fluency top-k if set)."""
        cls = self.classes[position]
        assert cls is not None
        mask = self.proxy.candidate_mask(cls, self.limits.vocab_top_k)
        plausible = self.plausible(position)
        if plausible is not None:
            mask = mask & plausible.to(mask.device)
        return mask

    def text_of(self, trace_ids: Sequence[int]) -> str:
        """The trace with changed tokens spliced in (everything else byte-identical)."""
        pieces = self.proxy.vocab().pieces
        out, pos = [], 0
        for i, (orig, new) in enumerate(zip(self.original, trace_ids, strict=True)):
            if orig == new:
                continue
            start, end = self.enc.offsets[i]
            out.append(self.trace[pos:start])
            out.append(pieces[new])
            pos = end
        out.append(self.trace[pos:])
        return "".join(out)

    def stable(self, trace_ids: Sequence[int]) -> bool:
        ids, _ = self.proxy.encode_trace_text(self.text_of(trace_ids))
        return ids == list(trace_ids)

    @staticmethod
    def swapped(base: Sequence[int], swaps: Sequence[tuple[int, int]]) -> list[int]:
        ids = list(base)
        for position, token in swaps:
            ids[position] = token
        return ids

    # -- one greedy step --------------------------------------------------------------------------
    def confirm_and_apply(self, candidates: Sequence[tuple[int, int]]) -> int:
        """Score up to ``confirm_top`` candidate swaps ``(trace position, token)`` with real forward
        passes, then apply the best non-adjacent ones that raise the loss (within budget and cap)."""
        per_round = self.limits.swaps_per_round or max(1, math.ceil(self.budget * self.limits.round_share))
        room = min(per_round, self.budget_left())
        if room <= 0:
            return 0
        pool: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for position, token in candidates:
            key = (int(position), int(token))
            if key in seen or not self.editable[key[0]] or key[0] in self.changed:
                continue
            seen.add(key)
            if key[1] == self.current[key[0]] or not bool(self.allowed(key[0])[key[1]]):
                continue
            if not self.stable(self.swapped(self.current, [key])):
                continue
            pool.append(key)
            if len(pool) >= self.limits.confirm_top:
                break
        if not pool:
            return 0
        losses = self.loss_of_trace_ids([self.swapped(self.current, [c]) for c in pool])
        ranked = sorted(
            (
                (loss, c)
                for loss, c in zip(losses, pool, strict=True)
                if loss > self.loss + 1e-7 and loss <= self.max_loss
            ),
            key=lambda item: -item[0],
        )
        picks: list[tuple[int, int]] = []
        for _, c in ranked:
            if len(picks) >= room:
                break
            if any(abs(c[0] - p[0]) <= 1 for p in picks):
                continue
            picks.append(c)
        if not picks:
            return 0
        options = [(ranked[0][0], 1)]
        combos = [j for j in range(2, len(picks) + 1) if self.stable(self.swapped(self.current, picks[:j]))]
        if combos:
            combo_losses = self.loss_of_trace_ids([self.swapped(self.current, picks[:j]) for j in combos])
            options += [
                (loss, j) for loss, j in zip(combo_losses, combos, strict=True) if loss <= self.max_loss
            ]
        loss, count = max(options)
        self.current = self.swapped(self.current, picks[:count])
        self.changed.update(p for p, _ in picks[:count])
        self.loss = loss
        self._kv = self._ce = None
        return count

    # -- result -----------------------------------------------------------------------------------
    def result(self) -> str:
        return self.text_of(self.current)

    def summary(self, name: str) -> str:
        ratio = math.exp(self.loss - self.base_loss)
        return (
            f"{name}: {len(self.changed)}/{len(self.original)} tokens changed (budget {self.budget}), "
            f"proxy loss {self.base_loss:.3f} -> {self.loss:.3f} (perplexity x{ratio:.2f}), "
            f"{self.rounds} rounds, {time.perf_counter() - self.started:.1f} s"
        )


# -- shared rewriter base -----------------------------------------------------------------------------
class ProxyRewriterOptions(BaseModel):
    """Options shared by the proxy-guided token-substitution rewriters."""

    model_config = ConfigDict(extra="forbid")

    max_fraction: float = Field(0.1, gt=0, le=1, description="at most this fraction of trace tokens change")
    candidates_per_position: int = Field(4, ge=1, le=256, description="replacement tokens kept per position")
    confirm_top: int = Field(
        16, ge=1, le=512, description="candidate swaps confirmed by forward passes per round"
    )
    swaps_per_round: int | None = Field(
        None, ge=1, description="swaps applied per round at most (default: a share of the budget)"
    )
    ppl_cap_ratio: float | None = Field(
        None, gt=1, description="fluency cap: proxy perplexity at most this multiple of the original's"
    )
    vocab_top_k: int | None = Field(
        None, ge=1, description="only the k most frequent word pieces (lowest BPE ids) as replacements"
    )
    proxy_model: str | None = Field(None, description="proxy student folder (default: the embedded model)")
    proxy_device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    seed: int | None = Field(None, description="random seed (default: from the host's per-attempt RNG)")
    time_budget_s: float = Field(20.0, gt=0, description="stop improving after this many seconds")
    max_tokens: int = Field(2048, ge=1, description="longer traces are refused (RewriterError)")
    whole_words: bool = Field(
        True, description="only replace tokens that are whole words (no pieces glued to letters)"
    )
    fluency_top_k: int | None = Field(
        None, ge=1, description="a replacement must be among the proxy's k most likely tokens there"
    )


class ProxyRewriter(Rewriter):
    """Base of the rewriters that substitute trace tokens to raise a proxy student's loss."""

    Options: ClassVar[type[BaseModel]] = ProxyRewriterOptions
    # default ``swaps_per_round``, as a share of the budget (expensive rounds apply more per round)
    round_share: ClassVar[float] = 0.25

    @abstractmethod
    def search(self, state: TraceSearch, generator: torch.Generator) -> None:
        """Run rounds of ``state.confirm_and_apply`` until the budget, time or ideas run out."""

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        opts = self.options
        try:
            proxy = proxy_for(context.services, opts.proxy_model, opts.proxy_device)  # type: ignore[attr-defined]
            limits = SearchLimits(
                max_fraction=opts.max_fraction,  # type: ignore[attr-defined]
                confirm_top=opts.confirm_top,  # type: ignore[attr-defined]
                swaps_per_round=opts.swaps_per_round,  # type: ignore[attr-defined]
                ppl_cap_ratio=opts.ppl_cap_ratio,  # type: ignore[attr-defined]
                vocab_top_k=opts.vocab_top_k,  # type: ignore[attr-defined]
                time_budget_s=opts.time_budget_s,  # type: ignore[attr-defined]
                max_tokens=opts.max_tokens,  # type: ignore[attr-defined]
                whole_words=opts.whole_words,  # type: ignore[attr-defined]
                fluency_top_k=opts.fluency_top_k,  # type: ignore[attr-defined]
                round_share=self.round_share,
            )
            state = TraceSearch(proxy, context.problem, trace, limits)
        except ProxyError as exc:
            raise RewriterError(str(exc)) from exc
        seed = opts.seed if opts.seed is not None else context.rng.randrange(2**31)  # type: ignore[attr-defined]
        if state.budget > 0 and state.free_positions():
            with torch.enable_grad():
                self.search(state, torch.Generator().manual_seed(seed))
        text = state.result()
        before, after = extract_final_answer(trace), extract_final_answer(text)
        if before is not None and not answers_match(before, after):  # cannot happen by construction
            raise RewriterError(f"{self.name} changed the final answer; refusing the rewrite")
        context.note(state.summary(self.name))
        return text
