"""Antidistillation sampling (Savani et al., NeurIPS 2025) as a teacher decoding option.

The teacher samples from its own logits plus ``λ·Δ``, where for every candidate next token ``x``

    Δ(x) = (log p_{θ+εĝ}(x | prefix) - log p_{θ-εĝ}(x | prefix)) / (2ε)

is a finite-difference estimate of the directional derivative of a *proxy student's* log-probability
along ``ĝ``, the (normalised) gradient of the proxy's loss on held-out clean traces. To first order, a
student step on token ``x`` changes its held-out loss by ``η·∇ℓ_heldout·∇log p(x) ∝ Δ(x)``, so tokens with
a large ``Δ`` are the ones whose imitation hurts a student most; ``λ`` trades teacher quality for that.

Cost: two proxy forward passes per generated token (incremental, with a key/value cache per perturbed
copy); :meth:`AntidistillationSampler.stats` reports them. The gradient is computed once per (proxy
weights, held-out data) and cached on disk (``<cache root>/ads/<key>.safetensors``, bf16) and in memory.

Tokenizers: the adjustment is indexed by token id, so teacher and proxy must share a tokenizer (the
embedded teacher and the embedded proxy do). :meth:`AntidistillationSampler.check_tokenizer` refuses
anything else; mapping across vocabularies (re-tokenising each prefix) is not supported.

Use::

    sampler = AntidistillationSampler(proxy_path, heldout_pairs, epsilon=0.01)
    processor = sampler.make_logits_processor(lam=1.0, prompt_attention_mask=enc["attention_mask"])
    model.generate(**enc, logits_processor=LogitsProcessorList([processor]))
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.paths import cache_root
from tracemark.plugins.proxy import ProxyError, ProxyStudent, load_proxy, output_cache
from transformers import LogitsProcessor

log = logging.getLogger(__name__)

__all__ = [
    "ADSError",
    "ADSLogitsProcessor",
    "AntidistillationSampler",
    "clear_gradient_memory",
    "gradient_cache_key",
    "heldout_gradient",
]

GRADIENT_FORMAT = "ads-gradient-v1"
_MEMORY: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
_MEMORY_LIMIT = 2
_MEMORY_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}


class ADSError(InvalidInput):
    """Bad antidistillation-sampling setup (no held-out data, tokenizer mismatch, bad λ/ε)."""


def _pairs(heldout: Iterable[Any]) -> list[tuple[str, str]]:
    pairs = []
    for item in heldout:
        if isinstance(item, dict):
            problem = item.get("problem", item.get("question"))
            trace = item.get("trace", item.get("answer"))
        else:
            problem, trace = item
        if not isinstance(problem, str) or not isinstance(trace, str) or not trace.strip():
            raise ADSError("each held-out example needs a problem and a non-empty trace (strings)")
        pairs.append((problem, trace))
    if not pairs:
        raise ADSError("antidistillation sampling needs at least one held-out clean trace")
    return pairs


def _weights_fingerprint(folder: Path) -> list[list[Any]]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def gradient_cache_key(proxy: ProxyStudent, heldout: Sequence[tuple[str, str]], max_length: int) -> str:
    """Hex key of (proxy path and weight files, held-out data, truncation) for the gradient cache."""
    data = hashlib.sha256(json.dumps(list(map(list, heldout)), ensure_ascii=False).encode()).hexdigest()
    blob = {
        "format": GRADIENT_FORMAT,
        "proxy": str(proxy.path),
        "weights": _weights_fingerprint(proxy.path),
        "data": data,
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]


def _default_cache_dir() -> Path:
    return cache_root() / "ads"


def clear_gradient_memory() -> None:
    """Forget the in-memory gradient cache (the disk cache stays)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()


def _compute_gradient(
    model: Any, proxy: ProxyStudent, heldout: Sequence[tuple[str, str]], max_length: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """∇θ of the mean (over examples) per-example mean loss on the held-out traces, accumulated in
    ``model``'s ``.grad`` and returned in bf16 (the precision that is cached)."""
    encoded = []
    for problem, trace in heldout:
        enc = proxy.encode(problem, trace)
        ids = enc.input_ids[:max_length]
        if len(ids) <= enc.label_start:
            raise ADSError(f"max_length={max_length} leaves no trace tokens of a held-out example")
        encoded.append((ids, enc.label_start))
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    pad = proxy.tokenizer.pad_token_id if proxy.tokenizer.pad_token_id is not None else 0
    try:
        with torch.enable_grad():
            for lo in range(0, len(encoded), batch_size):
                batch = encoded[lo : lo + batch_size]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for row, (ids, start) in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                    labels[row, start : len(ids)] = torch.tensor(ids[start:])
                input_ids, mask, labels = (t.to(proxy.device) for t in (input_ids, mask, labels))
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
                targets = labels[:, 1:]
                ce = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    targets.reshape(-1),
                    ignore_index=-100,
                    reduction="none",
                ).view(targets.shape)
                counts = (targets != -100).sum(dim=1).clamp(min=1)
                loss = (ce.sum(dim=1) / counts).sum() / len(encoded)
                loss.backward()
        return {
            name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().to(torch.bfloat16).cpu()
            for name, p in params.items()
        }
    finally:
        for p in params.values():
            p.grad = None
            p.requires_grad_(False)


def heldout_gradient(
    proxy: ProxyStudent,
    heldout: Iterable[Any],
    *,
    max_length: int = 512,
    batch_size: int = 4,
    cache_dir: str | Path | None = None,
    work_model: Any | None = None,
) -> tuple[dict[str, torch.Tensor], str, str]:
    """The proxy's held-out loss gradient (bf16, by parameter name), its source (``memory``, ``disk`` or
    ``computed``) and its cache key. Computed at most once per key and process (thread-safe)."""
    pairs = _pairs(heldout)
    key = gradient_cache_key(proxy, pairs, max_length)
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = folder / f"{key}.safetensors"
    with _MEMORY_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _MEMORY_LOCK:
            if key in _MEMORY:
                _MEMORY.move_to_end(key)
                return _MEMORY[key], "memory", key
        source = "disk"
        grad: dict[str, torch.Tensor] | None = None
        if path.is_file():
            from safetensors.torch import load_file

            try:
                grad = load_file(str(path))
            except Exception as exc:  # truncated or foreign file: recompute
                log.warning("ignoring unreadable ADS gradient cache %s: %s", path, exc)
        if grad is None:
            source = "computed"
            start = time.perf_counter()
            model = work_model if work_model is not None else copy.deepcopy(proxy.model)
            grad = _compute_gradient(model, proxy, pairs, max_length, batch_size)
            log.info(
                "ADS: held-out gradient over %d traces in %.1f s", len(pairs), time.perf_counter() - start
            )
            _save(grad, path)
        with _MEMORY_LOCK:
            _MEMORY[key] = grad
            while len(_MEMORY) > _MEMORY_LIMIT:
                _MEMORY.popitem(last=False)
        return grad, source, key


def _save(grad: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        save_file(
            {k: v.contiguous() for k, v in grad.items()}, str(staging), metadata={"format": GRADIENT_FORMAT}
        )
        staging.replace(path)
    except OSError as exc:  # a read-only cache folder only costs a recomputation next time
        log.warning("could not write the ADS gradient cache %s: %s", path, exc)


class AntidistillationSampler:
    """A proxy student, its held-out loss gradient, and the two perturbed copies θ ± εĝ.

    ``proxy``: a :class:`ProxyStudent`, a model folder, or None (the embedded model). ``heldout``: clean
    (problem, trace) pairs or dicts with ``problem``/``question`` and ``trace``/``answer``. With
    ``normalize`` (default) ``ĝ = g/‖g‖`` so ``epsilon`` is a step length in parameter space; without it
    ``ĝ = g`` as in the paper. Build once and share: processors made from it only read the copies.
    """

    def __init__(
        self,
        proxy: ProxyStudent | str | Path | None,
        heldout: Iterable[Any],
        *,
        epsilon: float = 0.01,
        normalize: bool = True,
        max_length: int = 512,
        batch_size: int = 4,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        if not epsilon > 0:
            raise ADSError(f"epsilon must be positive, got {epsilon}")
        try:
            self.proxy = proxy if isinstance(proxy, ProxyStudent) else load_proxy(proxy, device=device)
        except ProxyError as exc:
            raise ADSError(str(exc)) from exc
        self.epsilon = float(epsilon)
        self.normalize = normalize
        start = time.perf_counter()
        work = copy.deepcopy(self.proxy.model)
        grad, self.gradient_source, self.cache_key = heldout_gradient(
            self.proxy,
            heldout,
            max_length=max_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            work_model=work,
        )
        self.gradient_seconds = time.perf_counter() - start
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grad.values()))
        self.gradient_norm = float(norm)
        if not self.gradient_norm > 0:
            raise ADSError("the proxy's held-out gradient is zero; ADS would change nothing")
        step = self.epsilon / self.gradient_norm if normalize else self.epsilon
        self.plus = work
        self.minus = copy.deepcopy(self.proxy.model)
        with torch.no_grad():
            for (name, p_plus), (_, p_minus) in zip(
                self.plus.named_parameters(), self.minus.named_parameters(), strict=True
            ):
                g = grad[name].to(device=p_plus.device, dtype=torch.float32)
                p_plus.add_(g, alpha=step)
                p_minus.sub_(g, alpha=step)
        for model in (self.plus, self.minus):
            model.eval().requires_grad_(False)
        self.setup_seconds = time.perf_counter() - start
        self._lock = threading.Lock()
        self._totals = {
            "steps": 0,
            "rows": 0,
            "proxy_forward_passes": 0,
            "proxy_positions": 0,
            "seconds": 0.0,
        }

    # -- setup checks -----------------------------------------------------------------------------
    def check_tokenizer(self, teacher_tokenizer: Any) -> None:
        """Raise ADSError unless the teacher's tokenizer is the proxy's (same id for every token)."""
        mine = self.proxy.tokenizer
        if teacher_tokenizer is mine:
            return
        if teacher_tokenizer.get_vocab() != mine.get_vocab():
            raise ADSError(
                "antidistillation sampling needs the teacher and the proxy student to share a tokenizer"
            )

    def make_logits_processor(
        self,
        lam: float,
        *,
        teacher_tokenizer: Any | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        pad_token_id: int | None = None,
    ) -> ADSLogitsProcessor:
        """A fresh processor for one ``generate`` call (it caches the proxies' keys/values per call).

        ``prompt_attention_mask``: the prompt's attention mask (left padding) as passed to ``generate``;
        otherwise leading ``pad_token_id`` tokens are taken as padding."""
        if teacher_tokenizer is not None:
            self.check_tokenizer(teacher_tokenizer)
            if pad_token_id is None:
                pad_token_id = teacher_tokenizer.pad_token_id
        return ADSLogitsProcessor(
            self, lam, prompt_attention_mask=prompt_attention_mask, pad_token_id=pad_token_id
        )

    # -- the finite difference --------------------------------------------------------------------
    def delta(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Δ for the next token after each row of ``input_ids`` (full forward, no cache): (rows, vocab)."""
        ids = input_ids.to(self.proxy.device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(ids.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            lp = [
                torch.log_softmax(
                    m(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                    .logits[:, -1]
                    .float(),
                    dim=-1,
                )
                for m in (self.plus, self.minus)
            ]
        return (lp[0] - lp[1]) / (2 * self.epsilon)

    def _record(self, rows: int, positions: int, seconds: float) -> None:
        with self._lock:
            t = self._totals
            t["steps"] += 1
            t["rows"] += rows
            t["proxy_forward_passes"] += 2
            t["proxy_positions"] += 2 * positions
            t["seconds"] += seconds

    def stats(self) -> dict[str, Any]:
        """Totals over every processor of this sampler, with the cost per generated token."""
        with self._lock:
            t = dict(self._totals)
        return {
            **t,
            "ms_per_step": 1000 * t["seconds"] / t["steps"] if t["steps"] else 0.0,
            "ms_per_token": 1000 * t["seconds"] / t["rows"] if t["rows"] else 0.0,
            "gradient_source": self.gradient_source,
            "gradient_norm": self.gradient_norm,
            "gradient_seconds": self.gradient_seconds,
            "setup_seconds": self.setup_seconds,
            "epsilon": self.epsilon,
            "normalized": self.normalize,
        }


class ADSLogitsProcessor(LogitsProcessor):
    """Adds ``λ·Δ`` to the teacher's next-token scores (a transformers ``LogitsProcessor``).

    Works on batches (left padding); keeps the two proxies' key/value caches between steps of one
    ``generate`` call and recomputes from scratch whenever the rows are not the previous rows extended
    (new call, beam reordering). ``λ = 0`` returns the scores untouched without running the proxy."""

    def __init__(
        self,
        sampler: AntidistillationSampler,
        lam: float,
        *,
        prompt_attention_mask: torch.Tensor | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        if lam < 0 or lam != lam:
            raise ADSError(f"lambda must be a non-negative number, got {lam}")
        self.sampler = sampler
        self.lam = float(lam)
        self.prompt_attention_mask = prompt_attention_mask
        self.pad_token_id = pad_token_id
        self._seen: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._caches: list[Any] = [None, None]
        self.steps = 0
        self.rows = 0
        self.seconds = 0.0
        self.last_delta: torch.Tensor | None = None

    def _initial_mask(self, ids: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_attention_mask
        if prompt is not None and prompt.shape[0] == ids.shape[0] and prompt.shape[1] <= ids.shape[1]:
            prompt = prompt.to(ids.device, torch.long)
            extra = torch.ones(
                (ids.shape[0], ids.shape[1] - prompt.shape[1]), dtype=torch.long, device=ids.device
            )
            return torch.cat([prompt, extra], dim=1)
        if self.pad_token_id is None:
            return torch.ones_like(ids)
        started = (ids != self.pad_token_id).long().cummax(dim=1).values  # leading pads stay 0
        return started

    def _delta(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        sampler = self.sampler
        ids = input_ids.to(sampler.proxy.device)
        rows, width = ids.shape
        seen = self._seen
        if (
            seen is not None
            and self._mask is not None
            and seen.shape[0] == rows
            and seen.shape[1] < width
            and torch.equal(ids[:, : seen.shape[1]], seen)
        ):
            known = seen.shape[1]
            extra = torch.ones((rows, width - known), dtype=torch.long, device=ids.device)
            mask = torch.cat([self._mask, extra], dim=1)
            new = ids[:, known:]
            caches = self._caches
        else:
            known = 0
            mask = self._initial_mask(ids)
            new = ids
            caches = [None, None]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, known:]
        logps = []
        with torch.no_grad():
            for i, model in enumerate((sampler.plus, sampler.minus)):
                out = model(
                    input_ids=new,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **sampler.proxy.cache_kwargs(caches[i]),
                )
                caches[i] = output_cache(out)
                logps.append(torch.log_softmax(out.logits[:, -1].float(), dim=-1))
        self._seen, self._mask, self._caches = ids, mask, caches
        return (logps[0] - logps[1]) / (2 * sampler.epsilon), new.shape[1] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.lam == 0.0:
            return scores
        start = time.perf_counter()
        delta, positions = self._delta(input_ids)
        self.last_delta = delta
        width = min(scores.shape[-1], delta.shape[-1])
        adjusted = scores.clone()
        adjusted[:, :width] += self.lam * delta[:, :width].to(device=scores.device, dtype=scores.dtype)
        seconds = time.perf_counter() - start
        self.steps += 1
        self.rows += input_ids.shape[0]
        self.seconds += seconds
        self.sampler._record(input_ids.shape[0], positions, seconds)
        return adjusted

    def stats(self) -> dict[str, float]:
        """This processor's steps, rows (generated tokens over the batch) and time."""
        return {
            "steps": self.steps,
            "rows": self.rows,
            "seconds": self.seconds,
            "ms_per_step": 1000 * self.seconds / self.steps if self.steps else 0.0,
            "ms_per_token": 1000 * self.seconds / self.rows if self.rows else 0.0,
        }
