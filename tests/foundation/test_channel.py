"""The distributional channel's keyed arithmetic: green lists, bias, exact binomial test."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from tracemark.forensics.channel.score import binomial_p, score_token_rows
from tracemark.foundation.channel import (
    ChannelError,
    ChannelKey,
    ChannelSpec,
    GreenLists,
    Keyring,
    count_green,
    distinct_tuples,
    row_bias,
)
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor


def _key(i: int, scope: str = "account") -> ChannelKey:
    secret = bytes([i]) * 32 if i < 256 else hashlib.sha256(str(i).encode()).digest()
    return ChannelKey(secret=secret, scope=scope, name=f"a{i}" if scope == "account" else "")


def test_green_values_are_pinned():
    """Changing the arithmetic would silently invalidate every logged key: pin a few values."""
    lists = GreenLists(_key(7), 0.25)
    bits = "".join(map(str, lists.green(42, np.arange(24)).astype(int)))
    assert bits == "110001000000000001000001"
    assert "".join(map(str, lists.green(-1, np.arange(24)).astype(int))) == "110000000100000000111000"
    assert lists.row(42, 24).astype(int).tolist() == [int(b) for b in bits]


def test_green_fraction_is_gamma_and_keys_differ():
    a, b = GreenLists(_key(1), 0.25), GreenLists(_key(2), 0.25)
    row_a, row_b = a.row(5, 50_000), b.row(5, 50_000)
    assert binomtest(int(row_a.sum()), 50_000, 0.25).pvalue > 1e-4
    # independent keys agree on about gamma**2 of the vocabulary
    assert binomtest(int((row_a & row_b).sum()), 50_000, 0.0625).pvalue > 1e-4
    # a different context gives a different list
    assert (a.row(6, 50_000) != row_a).mean() > 0.3


def test_key_material_never_in_repr_or_pickle():
    key = _key(9)
    assert "\\t" not in repr(key) and "secret" not in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(ChannelError):
        ChannelKey(secret=b"short", scope="account")
    with pytest.raises(ChannelError):
        ChannelSpec(gamma=1.5)


def test_count_green_deduplicates():
    lists = GreenLists(_key(3), 0.5)
    tuples = distinct_tuples([[1, 2, 3, 1, 2, 3, 1, 2]])
    assert tuples == {(1, 2), (2, 3), (3, 1)}
    count = count_green(lists, tuples)
    assert count.n == 3
    expected = sum(bool(lists.green(p, np.array([t]))[0]) for p, t in tuples)
    assert count.green == expected


def test_processor_adds_delta_on_green_ids_per_row():
    spec = ChannelSpec(provider_delta=2.0, account_delta=1.0)
    ring = Keyring(
        spec,
        _key(1, "provider"),
        lambda name: ChannelKey(secret=name.encode() * 16, scope="account", name=name),
    )
    rows = [ring.lists_for("alice"), ring.lists_for(None)]
    proc = ChannelLogitsProcessor(rows)
    ids = torch.tensor([[1, 2, 9], [4, 5, 9]])
    scores = torch.zeros(2, 300)
    out = proc(ids, scores)
    provider = torch.from_numpy(ring.provider.row(9, 300))
    alice = torch.from_numpy(ring.account("alice").row(9, 300))
    assert torch.allclose(out[0], 2.0 * provider.float() + 1.0 * alice.float())
    assert torch.allclose(out[1], 2.0 * provider.float())
    assert np.allclose(row_bias(rows[1], 9, 300), out[1].numpy())


def test_binomial_test_detects_bias_and_is_calibrated():
    spec = ChannelSpec(gamma=0.25)
    key = _key(4)
    lists = GreenLists(key, spec.gamma)
    rng = np.random.default_rng(0)
    # text "decoded" with a strong bias: pick the next token among green ones 60% of the time
    rows, tok = [], 1
    for _ in range(40):
        row = [tok]
        for _ in range(60):
            green_ids = np.flatnonzero(lists.row(tok, 5000))
            tok = int(rng.choice(green_ids)) if rng.random() < 0.6 else int(rng.integers(5000))
            row.append(tok)
        rows.append(row)
    assert score_token_rows(rows, key=key, spec=spec).p_value < 1e-12
    # the same text under an unrelated key is not flagged, and p-values over many keys are uniform-ish
    ps = [score_token_rows(rows, key=_key(100 + i), spec=spec).p_value for i in range(200)]
    assert sum(p <= 0.05 for p in ps) <= 25  # ~10 expected; Binomial(200, .05) > 25 has p < 1e-4
    assert binomial_p(0, 10, 0.25) == 1.0 and binomial_p(5, 0, 0.25) == 1.0
