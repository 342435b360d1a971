"""``hotflip``: token substitutions that raise a proxy student's loss on the trace (HotFlip style).

Each round encodes problem + trace for the proxy (the trace as the assistant turn), takes the gradient of
the proxy's mean loss on the trace tokens with respect to the input embeddings, and ranks every swap
``a -> b`` at position ``i`` by its first-order loss change ``g_i·(e_b - e_a)`` (the one-hot gradient
through the embedding matrix) plus the exact change of the token's own target term
``(log p(a|prefix) - log p(b|prefix)) / N``. The best few swaps are confirmed with real forward passes
and applied greedily (non-adjacent positions, a combination only when it beats the best single swap).

Protections: answer-bearing tokens (numbers, ``\\boxed{}``, ``####``..., ``<<...>>``, LaTeX commands, the
final line) never change; only alphabetic word pieces are replaced, by alphabetic word pieces of the same
shape (leading space, capitalisation), so no digit or punctuation changes; at most ``max_fraction`` of
the trace tokens change; optionally the proxy perplexity stays within ``ppl_cap_ratio`` of the
original's. Every applied swap decodes and re-encodes to exactly the scored tokens.
"""

from __future__ import annotations

import torch
from pydantic import Field
from tracemark.plugins.builtin.proxy_base import ProxyRewriter, ProxyRewriterOptions
from tracemark.plugins.search import TraceSearch


class HotFlipOptions(ProxyRewriterOptions):
    """Options of ``hotflip``."""

    max_rounds: int = Field(8, ge=1, le=1000, description="gradient rounds at most")
    fluency_top_k: int | None = Field(
        20, ge=1, description="a replacement must be among the proxy's k most likely tokens there"
    )


def gradient_candidates(
    state: TraceSearch, per_position: int, generator: torch.Generator
) -> list[tuple[int, int]]:
    """Candidate swaps ``(trace position, token)`` of the free positions, best first-order gain first.

    The forward pass also becomes the search's cached pass over the current sequence."""
    proxy = state.proxy
    free = state.free_positions()
    if not free:
        return []
    n_trace = len(state.current)
    weight = proxy.embedding_matrix
    ids = torch.tensor(state.completion_ids(), device=proxy.device)
    embeds = weight[ids].detach().clone().unsqueeze(0).requires_grad_(True)
    ce, out = state.forward_completion(inputs_embeds=embeds)
    (grad,) = torch.autograd.grad(ce.mean(), embeds)
    state.adopt(ce, out)
    grad = grad[0, :n_trace]
    logits = out.logits[0].detach().float()
    n_labels = ce.shape[0]
    found: list[tuple[float, int, int]] = []
    with torch.no_grad():
        for lo in range(0, len(free), 64):
            rows = torch.tensor(free[lo : lo + 64], device=proxy.device)
            current = ids[rows].unsqueeze(1)
            first = grad[rows] @ weight.T  # (rows, V): g_i · e_b
            first = first - first.gather(1, current)
            # the distribution that predicts trace token i (the prompt's last one for i = 0)
            logp = torch.log_softmax(logits[(rows - 1).clamp(min=0)], dim=-1)
            logp[rows == 0] = state.prompt_logp
            target = (logp.gather(1, current) - logp) / n_labels
            score = first + target
            noise = torch.rand(score.shape, generator=generator).to(score.device)
            score = score + 1e-6 * score.abs().mean() * noise  # seeded tie-break
            allowed = torch.stack([state.allowed(int(r)).to(score.device) for r in rows.tolist()])
            allowed.scatter_(1, current, False)
            score = score.masked_fill(~allowed, float("-inf"))
            values, tokens = score.topk(min(per_position, score.shape[1]), dim=1)
            for r, position in enumerate(rows.tolist()):
                for value, token in zip(values[r].tolist(), tokens[r].tolist(), strict=True):
                    if value != float("-inf"):
                        found.append((value, position, token))
    found.sort(key=lambda item: -item[0])
    return [(position, token) for _, position, token in found]


class HotFlipRewriter(ProxyRewriter):
    name = "hotflip"
    description = (
        "Gradient-guided token substitutions (HotFlip) that raise a small proxy student's loss on the trace; "
        "numbers, \\boxed{}, #### and the final line never change; budget max_fraction of tokens."
    )
    Options = HotFlipOptions

    def search(self, state: TraceSearch, generator: torch.Generator) -> None:
        opts = self.options
        for _ in range(opts.max_rounds):  # type: ignore[attr-defined]
            if state.budget_left() <= 0 or not state.round_fits():
                break
            state.begin_round()
            candidates = gradient_candidates(state, opts.candidates_per_position, generator)  # type: ignore[attr-defined]
            if state.expired() or not state.confirm_and_apply(candidates):
                break
