"""The channel's green lists computed by torch on the logits' own device (e.g. inside a GPU engine).

Bit for bit the arithmetic of :class:`tracemark.foundation.channel.GreenLists` (HMAC seed on the host,
then splitmix64 over ``seed + token * golden`` and ``< gamma * 2**64``), written in int64 so it runs on
any torch device: two's-complement addition and multiplication wrap exactly like uint64, a logical right
shift is an arithmetic one masked to the remaining bits, and an unsigned comparison is a signed one after
flipping the top bit. Only one 8-byte seed per row and key crosses to the device each step, instead of a
``[batch, vocab]`` bias computed on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tracemark.foundation.channel import ChannelError, GreenLists, _threshold, context_of

_U64 = 1 << 64
_SIGN = 1 << 63


def _signed(value: int) -> int:
    value = int(value) % _U64
    return value - _U64 if value >= _SIGN else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_SPREAD: dict[tuple[int, str], torch.Tensor] = {}


def _spread(vocab_size: int, device: torch.device) -> torch.Tensor:
    key = (vocab_size, str(device))
    spread = _SPREAD.get(key)
    if spread is None:
        spread = torch.arange(vocab_size, dtype=torch.int64, device=device) * _GOLDEN
        if len(_SPREAD) < 16:
            _SPREAD[key] = spread
    return spread


def green_mask(seeds: torch.Tensor, thresholds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[rows, vocab_size]`` booleans: token ``t`` is green in row ``r`` when splitmix64 of
    ``seeds[r] + t * golden`` is below ``thresholds[r]`` (both int64 holding uint64 bits; thresholds
    already top-bit-flipped, see :func:`flipped_threshold`). Two ``[rows, vocab]`` int64 buffers."""
    x = seeds[:, None] + _spread(vocab_size, seeds.device)[None, :]
    t = torch.empty_like(x)
    for bits, multiplier in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(x, bits, out=t)
        t.bitwise_and_((1 << (64 - bits)) - 1)  # the logical shift: drop the sign bits shifted in
        x.bitwise_xor_(t)
        if multiplier is not None:
            x.mul_(multiplier)
    return x.bitwise_xor_(-_SIGN) < thresholds[:, None]


def flipped_threshold(gamma: float) -> int:
    """``gamma``'s uint64 threshold as the int64 that compares like it once both sides' top bit flips."""
    return int(_threshold(gamma)) - _SIGN


def device_batch_bias(
    rows: Sequence[Sequence[tuple[GreenLists, float]] | None],
    prev: Sequence[int],
    vocab_size: int,
    *,
    width: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """:func:`tracemark.foundation.channel.batch_bias` computed on ``device`` (the same float32 values):
    keys are added in each row's order, one torch pass per key position. ``None`` when no row is biased."""
    if len(rows) != len(prev):
        raise ChannelError(f"channel bias needs one previous token per row, got {len(prev)} for {len(rows)}")
    width_k = max((len(r) for r in rows if r), default=0)
    if width_k == 0:
        return None
    bias = None
    for k in range(width_k):
        seeds, thresholds, deltas = [], [], []
        for p, lists in zip(prev, rows):
            if lists and k < len(lists) and lists[k][1]:
                green_lists, delta = lists[k]
                seeds.append(_signed(green_lists.seed(context_of(int(p), width))))
                thresholds.append(flipped_threshold(green_lists.gamma))
                deltas.append(float(np.float32(delta)))
            else:
                seeds.append(0)
                thresholds.append(-_SIGN)  # the smallest flipped value: nothing is green
                deltas.append(0.0)
        if not any(deltas):
            continue
        mask = green_mask(
            torch.tensor(seeds, dtype=torch.int64, device=device),
            torch.tensor(thresholds, dtype=torch.int64, device=device),
            vocab_size,
        )
        term = mask.to(torch.float32) * torch.tensor(deltas, dtype=torch.float32, device=device)[:, None]
        bias = term if bias is None else bias.add_(term)
    return bias


def add_channel_bias_on_device(
    scores: torch.Tensor,
    rows: Sequence[Sequence[tuple[GreenLists, float]] | None],
    prev: Sequence[int],
    *,
    width: int = 1,
    inplace: bool = False,
) -> torch.Tensor:
    """:func:`tracemark.foundation.models.channel_processor.add_channel_bias` with the green lists
    computed on ``scores``' device (same values)."""
    bias = device_batch_bias(rows, prev, scores.shape[1], width=width, device=scores.device)
    if bias is None:
        return scores
    bias = bias.to(dtype=scores.dtype)
    return scores.add_(bias) if inplace else scores + bias
