"""A small *proxy student* for the gradient-based rewriters and antidistillation sampling.

:func:`load_proxy` loads any local causal LM folder (safetensors only; default: the embedded SmolLM2
model) once per (path, device) and caches it process-wide (thread-safe). The model is frozen
(``requires_grad=False``): rewriters take gradients with respect to *inputs* only, so one cached model
can serve several threads. :func:`proxy_for` prefers the proxy the host put in the rewrite context.

An example is encoded the way ``tracemark.experiments.distill.encode_example`` encodes it for a student: the
problem is the user turn of the chat template, the trace the assistant turn, and the loss is the mean
cross-entropy over the trace tokens and the end-of-turn marker.

The rest of the proxy machinery: :mod:`tracemark.plugins.protected` (answer-bearing spans),
:mod:`tracemark.plugins.search` (the token-substitution search) and
:mod:`tracemark.plugins.builtin.proxy_base` (the rewriters' base class).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.models.device import DeviceError, resolve_device
from tracemark.foundation.models.embedded import ensure_embedded_model
from tracemark.foundation.models.gguf import gguf_to_folder
from tracemark.plugins.protected import QUANTITY_PIECE

log = logging.getLogger(__name__)

__all__ = [
    "EncodedTrace",
    "ProxyError",
    "ProxyStudent",
    "clear_proxy_cache",
    "load_proxy",
    "output_cache",
    "proxy_for",
]


class ProxyError(InvalidInput):
    """The proxy student cannot be loaded or cannot encode the input (one-line message; a ValueError)."""


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
            ok = i not in special and word.isascii() and word.isalpha() and not QUANTITY_PIECE.match(word)
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


def proxy_for(injected: ProxyStudent | None, path: str | None, device: str = "cpu") -> ProxyStudent:
    """The host's proxy (``RewriteContext.proxy``, passed as ``injected``) when no path is asked for,
    else the one loaded from ``path`` (None: the embedded model)."""
    if path is None and isinstance(injected, ProxyStudent):
        return injected
    return load_proxy(path, device=device)


def output_cache(output: Any) -> Any:
    """The cache a model call returned (``cache`` in recent transformers, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
