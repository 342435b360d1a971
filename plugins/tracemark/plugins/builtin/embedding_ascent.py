"""``embedding-ascent``: raise a proxy student's loss in embedding space, then project back to tokens.

Each round optimises offsets ``δ`` of the input embeddings of the editable trace tokens by gradient ascent
(Adam) on ``loss(e + δ) - l2_weight · mean‖δ‖² / mean‖e‖²``: the penalty keeps the embeddings near the
originals. Each optimised embedding is then projected to its nearest token by cosine similarity within
the same candidate filter as ``hotflip`` (alphabetic word pieces of the same shape, optionally the most
frequent ones or the proxy's top-k there); positions whose nearest token changed come first, the others
follow by how far ``δ`` moved them toward another token. Projections are kept only when a real forward
pass shows they raise the loss, within the budget and the optional perplexity cap. Answer-bearing tokens
never change (see :func:`tracemark.plugins.protected.protected_spans`).
"""

from __future__ import annotations

import torch
from pydantic import Field
from tracemark.plugins.builtin.proxy_base import ProxyRewriter, ProxyRewriterOptions
from tracemark.plugins.search import TraceSearch


class EmbeddingAscentOptions(ProxyRewriterOptions):
    """Options of ``embedding-ascent``."""

    candidates_per_position: int = Field(2, ge=1, le=256, description="nearest tokens kept per position")
    steps: int = Field(6, ge=1, le=200, description="gradient-ascent steps per round")
    step_size: float = Field(
        0.1, gt=0, le=10, description="Adam learning rate, in units of the embeddings' RMS coordinate"
    )
    l2_weight: float = Field(
        1.0, ge=0, description="weight of the penalty keeping embeddings near the originals"
    )
    rounds: int = Field(3, ge=1, le=100, description="ascent + projection rounds at most")


def ascend_and_project(
    state: TraceSearch,
    *,
    steps: int,
    step_size: float,
    l2_weight: float,
    per_position: int,
    generator: torch.Generator,
) -> list[tuple[int, int]]:
    """Candidate swaps ``(trace position, token)`` from one embedding-ascent run, best first."""
    proxy = state.proxy
    free = state.free_positions()
    if not free:
        return []
    weight = proxy.embedding_matrix.detach()
    ids = torch.tensor(state.completion_ids(), device=proxy.device)
    base = weight[ids]
    rows = torch.tensor(free, device=proxy.device)
    scale = float(weight.float().pow(2).mean().sqrt())
    reference = base[rows].float().pow(2).sum(-1).mean()
    noise = torch.randn((len(free), weight.shape[1]), generator=generator).to(weight.device)
    delta = (0.01 * scale * noise).to(weight.dtype).requires_grad_(True)
    optimiser = torch.optim.Adam([delta], lr=step_size * scale)
    for _ in range(steps):
        embeds = base.index_add(0, rows, delta)
        ce, _ = state.forward_completion(inputs_embeds=embeds.unsqueeze(0))
        penalty = delta.float().pow(2).sum(-1).mean() / reference
        objective = ce.mean() - l2_weight * penalty
        optimiser.zero_grad()
        (-objective).backward()
        optimiser.step()
        if state.expired():
            break
    found: list[tuple[int, float, int, int]] = []  # (choice rank, advantage, position, token)
    with torch.no_grad():
        unit = torch.nn.functional.normalize(weight.float(), dim=-1)
        moved = torch.nn.functional.normalize((base[rows] + delta.detach()).float(), dim=-1)
        for lo in range(0, len(free), 64):
            chunk = free[lo : lo + 64]
            cos = moved[lo : lo + 64] @ unit.T
            current = ids[torch.tensor(chunk, device=proxy.device)].unsqueeze(1)
            own = cos.gather(1, current)
            allowed = torch.stack([state.allowed(p).to(cos.device) for p in chunk])
            allowed.scatter_(1, current, False)
            cos = cos.masked_fill(~allowed, float("-inf"))
            values, tokens = cos.topk(min(per_position, cos.shape[1]), dim=1)
            for r, position in enumerate(chunk):
                for rank, (value, token) in enumerate(
                    zip(values[r].tolist(), tokens[r].tolist(), strict=True)
                ):
                    if value != float("-inf"):
                        found.append((rank, -(value - float(own[r])), position, token))
    # every position's nearest other token (those that beat the original first), then second choices...
    found.sort()
    return [(position, token) for _, _, position, token in found]


class EmbeddingAscentRewriter(ProxyRewriter):
    name = "embedding-ascent"
    description = (
        "Continuous embedding ascent on a small proxy student's loss, projected to the nearest tokens "
        "(cosine) and kept only where the real loss rises; answer-bearing tokens never change."
    )
    Options = EmbeddingAscentOptions
    round_share = 0.5

    def search(self, state: TraceSearch, generator: torch.Generator) -> None:
        opts = self.options
        for _ in range(opts.rounds):  # type: ignore[attr-defined]
            if state.budget_left() <= 0 or not state.round_fits():
                break
            state.begin_round()
            candidates = ascend_and_project(
                state,
                steps=opts.steps,  # type: ignore[attr-defined]
                step_size=opts.step_size,  # type: ignore[attr-defined]
                l2_weight=opts.l2_weight,  # type: ignore[attr-defined]
                per_position=opts.candidates_per_position,  # type: ignore[attr-defined]
                generator=generator,
            )
            if state.expired() or not state.confirm_and_apply(candidates):
                break
