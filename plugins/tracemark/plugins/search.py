"""The token-substitution search both proxy-guided rewriters (``hotflip``, ``embedding-ascent``) share.

:class:`TraceSearch` holds one rewrite in progress: the encoded example, the editable positions (never an
answer-bearing token, see :mod:`tracemark.plugins.protected`), the candidate vocabulary filter, the
budget, the perplexity cap and a greedy "confirm with real forward passes, then apply" step.
:class:`SearchLimits` is its budget; :func:`cache_tensors` and :func:`make_cache` reuse the keys/values
of an unchanged prefix so candidate losses cost only the changed suffix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tracemark.plugins.protected import protected_mask
from tracemark.plugins.proxy import ProxyError, ProxyStudent, output_cache

__all__ = ["KV", "SearchLimits", "TraceSearch", "cache_tensors", "make_cache"]


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
