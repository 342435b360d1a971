"""The channel's green lists computed by torch (int64 on any device) are bit for bit the numpy ones."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from tracemark.foundation.channel import ChannelKey, ChannelSpec, GreenLists, Keyring, batch_bias
from tracemark.foundation.models.channel_device import (
    _signed,
    add_channel_bias_on_device,
    device_batch_bias,
    flipped_threshold,
    green_mask,
)
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor


def _key(i: int, scope: str = "account") -> ChannelKey:
    return ChannelKey(secret=hashlib.sha256(str(i).encode()).digest(), scope=scope, name=f"a{i}")


@pytest.mark.parametrize("gamma", [0.01, 0.25, 0.5, 0.999])
def test_green_mask_equals_the_numpy_rows(gamma):
    for i in range(40):
        lists = GreenLists(_key(i), gamma)
        prev = -1 if i % 8 == 0 else i * 7919
        got = green_mask(
            torch.tensor([_signed(lists.seed(prev))]), torch.tensor([flipped_threshold(gamma)]), 3001
        )
        assert np.array_equal(got[0].numpy(), lists.row(prev, 3001)), (i, gamma)


@pytest.mark.parametrize("width", [0, 1])
def test_device_bias_equals_the_shared_core(width):
    spec = ChannelSpec(provider_delta=1.5, account_delta=0.7, context_width=width)
    ring = Keyring(spec, _key(0, "provider"), lambda name: _key(len(name) + 10))
    rows = [ring.lists_for("al"), None, ring.lists_for(None), [], ring.lists_for("bobby")]
    prev = [5, 9, 5, 1, 400]
    expected = batch_bias(rows, prev, 997, width=width)
    assert np.array_equal(device_batch_bias(rows, prev, 997, width=width).numpy(), expected)
    scores = torch.randn(5, 997)
    reference = ChannelLogitsProcessor(rows, width=width)(torch.tensor(prev)[:, None], scores.clone())
    assert torch.equal(add_channel_bias_on_device(scores.clone(), rows, prev, width=width), reference)
    assert device_batch_bias([None, []], [1, 2], 997) is None
