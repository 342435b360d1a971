"""The signature scheme (issuance-time parameters) and the public salient set."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracemark.forensics.salient import context_numbers, salient_set, trigger_number
from tracemark.forensics.scheme import SchemeError, SignatureScheme
from tracemark.forensics.scoring import DEFAULT_CONTEXTS, DEFAULT_PROBLEM
from tracemark.forensics.signatures import DERIVATION_V2


def test_default_scheme_is_six_digits_and_round_trips():
    s = SignatureScheme()
    assert s.digits == 6 and s.derivation == DERIVATION_V2 and s.space.size == 10**6
    again = SignatureScheme.from_dict(s.as_dict())
    assert again == s and again.digest() == s.digest()
    assert SignatureScheme(digits=4).digest() != s.digest()


@pytest.mark.parametrize(
    "bad",
    [
        {"digits": 0},
        {"digits": 8},
        {"pairs_per_account": 0},
        {"contexts": ("no placeholder",)},
        {"combine": "median"},
        {"search_budget": 1},
        {"derivation": "tm-sig-v9"},
    ],
)
def test_bad_schemes_are_refused(bad):
    with pytest.raises(SchemeError):
        SignatureScheme(**bad)


def test_malformed_logged_scheme_is_refused():
    with pytest.raises(SchemeError):
        SignatureScheme.from_dict({"format": "tracemark-scheme/1", "digits": 6})
    with pytest.raises(SchemeError):
        SignatureScheme.from_dict({"digits": 6})


def test_the_salient_set_holds_what_an_innocent_model_favours():
    numbers = context_numbers(DEFAULT_CONTEXTS, DEFAULT_PROBLEM)
    assert "24" in numbers and "6" in numbers
    four = salient_set(4, trigger="x137 =", numbers=numbers)
    # the SmolLM2 prior's favourites after `x137 =` (issue 12): round numbers and the trigger echo
    for c in ["2400", "1370", "6000", "3600", "1000", "0000", "1111", "2024", "1234", "0137"]:
        assert four.contains_text(c), c
    assert not four.contains_text("4821")
    six = salient_set(6, trigger="x137 =", numbers=numbers)
    for c in ["240000", "137000", "999137", "123456", "121212", "202411", "000024", "240123", "100006"]:
        assert six.contains_text(c), c
    assert 0.01 < six.size / 10**6 < 0.1  # a small public slice of the space
    assert six.eligible == 10**6 - six.size
    assert six.mask().sum() == six.eligible


def test_salient_set_depends_only_on_public_inputs():
    a = salient_set(6, trigger="x137 =", numbers=("24",))
    b = salient_set(6, trigger="k137 =", numbers=("24",))
    c = salient_set(6, trigger="x138 =", numbers=("24",))
    assert np.array_equal(a.indices, b.indices)  # only the trigger's number matters
    assert not np.array_equal(a.indices, c.indices)
    assert trigger_number("q42 =") == "42"


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.text("abc", min_size=1, max_size=5))
def test_v2_targets_are_never_salient(key, account):
    scheme = SignatureScheme(pairs_per_account=4)
    for pair in scheme.derive(key, account=account, key_version=1):
        assert len(pair.target) == 6
        assert not scheme.salient_for(pair.trigger).contains_text(pair.target)


def test_v2_targets_are_uniform_over_the_eligible_candidates():
    """The target's position among its trigger's eligible candidates is uniform (KS over many keys)."""
    from scipy import stats

    scheme = SignatureScheme(digits=3, pairs_per_account=1, merged_digit_decoys=99)
    positions = []
    jitter = np.random.default_rng(0)
    for _ in range(3000):
        (pair,) = scheme.derive(os.urandom(32), account="a", key_version=1)
        eligible = np.nonzero(scheme.salient_for(pair.trigger).mask())[0]
        pos = int(np.searchsorted(eligible, int(pair.target)))
        assert eligible[pos] == int(pair.target)
        positions.append((pos + jitter.random()) / eligible.size)
    assert stats.kstest(positions, "uniform").pvalue > 1e-4


def test_one_candidates_membership_agrees_with_the_whole_space_mask():
    """Derivation asks about one candidate, ranking uses the whole-space mask: both give the same set."""
    for trigger in ("x137 =", "q42 =", "k999 ="):
        s = salient_set(4, trigger=trigger, numbers=("1", "24", "4", "6", "4821"))
        salient = s.salient_mask()
        assert [s.contains(i) for i in range(10_000)] == salient.tolist()
        assert s.size == int(salient.sum()) and s.eligible == int(s.mask().sum())


def test_scheme_channel_round_trip_and_old_schemes_load_without_it():
    from tracemark.forensics.scheme import SchemeError, SignatureScheme
    from tracemark.foundation.channel import ChannelSpec

    old = SignatureScheme()
    assert "channel" not in old.as_dict()
    assert SignatureScheme.from_dict(old.as_dict()).channel is None
    spec = ChannelSpec(gamma=0.3, tokenizer="ab" * 8)
    new = SignatureScheme(channel=spec)
    data = new.as_dict()
    assert data["channel"]["gamma"] == 0.3
    back = SignatureScheme.from_dict(data)
    assert back == new and back.channel == spec and back.digest() != old.digest()
    with pytest.raises(SchemeError):
        SignatureScheme.from_dict({**data, "channel": {"gamma": 2.0}})
    with pytest.raises(SchemeError):
        SignatureScheme.from_dict({**data, "channel": "x"})
