"""Shared base of the proxy-guided token-substitution rewriters (``hotflip``, ``embedding-ascent``):
options, proxy selection (the host's :attr:`RewriteContext.proxy` or a loaded one), the search budget and
the final-answer check. Subclasses implement :meth:`ProxyRewriter.search`."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError
from tracemark.plugins.proxy import ProxyError, proxy_for
from tracemark.plugins.search import SearchLimits, TraceSearch

__all__ = ["ProxyRewriter", "ProxyRewriterOptions"]


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
            proxy = proxy_for(context.proxy, opts.proxy_model, opts.proxy_device)  # type: ignore[attr-defined]
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
