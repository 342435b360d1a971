"""The distributional channel as a transformers ``LogitsProcessor``: one bias per batch row."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from tracemark.foundation.channel import GreenLists, row_bias
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
        batch, vocab = scores.shape
        if batch != len(self.rows):
            raise ValueError(f"channel processor built for {len(self.rows)} rows, got {batch}")
        prev = input_ids[:, -1].tolist()
        bias = np.zeros((batch, vocab), dtype=np.float32)
        touched = False
        for i, (p, lists) in enumerate(zip(prev, self.rows)):
            if row_bias(lists, p, vocab, width=self.width, out=bias[i]) is not None:
                touched = True
        if touched:
            scores = scores + torch.from_numpy(bias).to(device=scores.device, dtype=scores.dtype)
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return scores
