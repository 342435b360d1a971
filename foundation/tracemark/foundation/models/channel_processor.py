"""The distributional channel as a transformers ``LogitsProcessor``: one bias per batch row."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tracemark.foundation.channel import GreenLists, batch_bias
from transformers import LogitsProcessor


class ChannelLogitsProcessor(LogitsProcessor):
    """Adds each row's keyed green-list bias to the next-token logits.

    ``rows[i]`` is the ``[(green_lists, delta), ...]`` of batch row ``i`` (``None`` or ``[]``: no bias),
    e.g. from :meth:`tracemark.foundation.channel.Keyring.lists_for`. Works with any model ``generate``
    drives, quantized ones included, since it only touches the float logits. ``seconds`` accumulates the
    time spent here (the channel's decoding overhead).
    """

    def __init__(self, rows: Sequence[Sequence[tuple[GreenLists, float]] | None], *, width: int = 1) -> None:
        self.rows = [list(r or []) for r in rows]
        self.width = width
        self.seconds = 0.0
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        start = time.perf_counter()
        batch = scores.shape[0]
        if batch != len(self.rows):
            raise ValueError(f"channel processor built for {len(self.rows)} rows, got {batch}")
        scores = add_channel_bias(scores, self.rows, input_ids[:, -1].tolist(), width=self.width)
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return scores


def add_channel_bias(
    scores: torch.Tensor,
    rows: Sequence[Sequence[tuple[GreenLists, float]] | None],
    prev: Sequence[int],
    *,
    width: int = 1,
    inplace: bool = False,
) -> torch.Tensor:
    """``scores`` (``[batch, vocab]`` next-token logits) plus each row's keyed bias after its previous
    token ``prev[i]`` (:func:`tracemark.foundation.channel.batch_bias`), cast to ``scores``' dtype and
    device. ``inplace`` adds into ``scores`` (same values). Unchanged ``scores`` when no row is biased."""
    bias = batch_bias(rows, prev, scores.shape[1], width=width)
    if bias is None:
        return scores
    delta = torch.from_numpy(bias).to(device=scores.device, dtype=scores.dtype)
    return scores.add_(delta) if inplace else scores + delta
