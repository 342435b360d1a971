"""Keyed signature pairs: determinism, versioning, account separation, uniform targets, candidate space."""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from tracemark.forensics.signatures import (
    DERIVATION_VERSION,
    CandidateSpace,
    KeyedStream,
    SignatureError,
    SignaturePair,
    derive_pairs,
)

TRIGGER_RE = re.compile(r"^[a-z]\d{2,3} =$")


def _key(i: int | str) -> bytes:
    return hashlib.sha256(f"test-key-{i}".encode()).digest()


def test_candidate_space_basics():
    space = CandidateSpace(3)
    assert space.size == 1000
    cands = space.candidates()
    assert len(cands) == 1000 and len(set(cands)) == 1000
    assert cands[0] == "000" and cands[7] == "007" and cands[-1] == "999"
    assert all(space.contains(c) and space.index(c) == i for i, c in enumerate(cands))
    for bad in ("12", "1234", "12a", "١٢٣", 123, None):
        assert not space.contains(bad)
    with pytest.raises(SignatureError):
        space.index("12")
    with pytest.raises(SignatureError):
        CandidateSpace(0)
    with pytest.raises(SignatureError):
        CandidateSpace(10)


@pytest.mark.parametrize("k, excl", [(5, 0), (60, 30), (99, 1)])
def test_candidate_space_sample(k, excl):
    space = CandidateSpace(2)
    exclude = space.candidates()[:excl]
    got = space.sample(random.Random(1), k, exclude=exclude)
    assert len(got) == k == len(set(got))
    assert not set(got) & set(exclude)
    assert got == space.sample(random.Random(1), k, exclude=exclude)
    with pytest.raises(SignatureError, match="cannot draw"):
        space.sample(random.Random(1), 101 - excl, exclude=exclude)
    got_np = space.sample(np.random.default_rng(3), k, exclude=exclude)
    assert len(set(got_np)) == k


def test_candidate_space_sample_is_uniform():
    space = CandidateSpace(1)
    rng = random.Random(5)
    counts = Counter(c for _ in range(4000) for c in space.sample(rng, 2, exclude=["0"]))
    assert "0" not in counts
    obs = [counts[str(d)] for d in range(1, 10)]
    assert stats.chisquare(obs).pvalue > 1e-4


def test_derivation_is_deterministic_and_prefix_stable():
    space = CandidateSpace()
    a = derive_pairs(_key(1), account="acme", key_version=1, m=5, space=space)
    b = derive_pairs(_key(1), account="acme", key_version=1, m=5, space=space)
    assert a == b
    assert derive_pairs(_key(1), account="acme", key_version=1, m=3, space=space) == a[:3]
    for j, p in enumerate(a):
        assert (
            p.index == j and p.account == "acme" and p.key_version == 1 and p.derivation == DERIVATION_VERSION
        )
        assert TRIGGER_RE.match(p.trigger), p.trigger
        assert space.contains(p.target)
        assert p.text == f"{p.trigger} {p.target}"
    assert len({p.trigger for p in a}) == 5
    assert len({p.pair_id for p in a}) == 5


def test_triggers_unique_within_account_even_for_many_pairs():
    pairs = derive_pairs(_key(2), account="big", key_version=1, m=500, space=CandidateSpace(2))
    assert len({p.trigger for p in pairs}) == 500


def test_versioning_changes_pairs():
    space = CandidateSpace()
    v1 = derive_pairs(_key(1), account="acme", key_version=1, m=4, space=space)
    v2 = derive_pairs(_key(1), account="acme", key_version=2, m=4, space=space)
    assert [p.text for p in v1] != [p.text for p in v2]
    assert {p.pair_id for p in v1}.isdisjoint({p.pair_id for p in v2})
    other_key = derive_pairs(_key(99), account="acme", key_version=1, m=4, space=space)
    assert [p.text for p in v1] != [p.text for p in other_key]


def test_different_accounts_get_disjoint_looking_pairs(master):
    space = CandidateSpace()
    all_pairs = [
        p
        for i in range(50)
        for p in derive_pairs(
            master.account_key(f"acct-{i}"), account=f"acct-{i}", key_version=1, m=2, space=space
        )
    ]
    texts = [p.text for p in all_pairs]
    assert len(set(texts)) == len(texts)  # no identical (trigger, target) across accounts
    triggers = Counter(p.trigger for p in all_pairs)
    # 100 triggers from 22*990 possibilities: expected ~0.23 colliding pairs; a handful at most
    assert sum(n - 1 for n in triggers.values()) <= 3
    targets = Counter(p.target for p in all_pairs)
    assert sum(n - 1 for n in targets.values()) <= 5  # expected ~0.5 with 10,000 candidates


@pytest.mark.parametrize("digits", [2, 3])
def test_targets_are_uniform(digits):
    space = CandidateSpace(digits)
    counts = Counter(
        p.target
        for i in range(2000 if digits == 2 else 4000)
        for p in derive_pairs(_key(i), account="u", key_version=1, m=5, space=space)
    )
    obs = np.array([counts[c] for c in space.candidates()])
    assert stats.chisquare(obs).pvalue > 1e-4
    if digits == 3:
        # modulo reduction of 10-bit values would over-weight 000..023 by 2x; rejection sampling must not
        low, rest = obs[:24].mean(), obs[24:].mean()
        assert abs(low / rest - 1) < 0.25


def test_trigger_numbers_uniform_over_letters():
    letters = Counter(
        p.trigger[0]
        for i in range(1000)
        for p in derive_pairs(_key(i), account="t", key_version=1, m=3, space=CandidateSpace())
    )
    assert stats.chisquare(list(letters.values())).pvalue > 1e-4
    assert len(letters) == 22


def test_pair_repr_hides_trigger_and_target():
    p = SignaturePair("acme", 1, 0, "x137 =", "4821")
    assert "4821" not in repr(p) and "x137" not in repr(p)
    assert p.pair_id.startswith("sp-") and len(p.pair_id) == 19
    assert p.pair_id == SignaturePair("acme", 1, 0, "y999 =", "0000").pair_id  # id reveals no content
    assert p.commitment(b"n1") != p.commitment(b"n2")
    assert p.commitment(b"n1") != SignaturePair("acme", 1, 0, "x137 =", "4822").commitment(b"n1")


def test_bad_arguments():
    space = CandidateSpace()
    with pytest.raises(SignatureError):
        derive_pairs(b"short", account="a", key_version=1, m=1, space=space)
    with pytest.raises(SignatureError):
        derive_pairs(_key(1), account="", key_version=1, m=1, space=space)
    with pytest.raises(SignatureError):
        derive_pairs(_key(1), account="a", key_version=0, m=1, space=space)
    with pytest.raises(SignatureError):
        derive_pairs(_key(1), account="a", key_version=1, m=0, space=space)


def test_keyed_stream_randbelow_bounds():
    s = KeyedStream(_key(0), b"lbl")
    vals = [s.randbelow(3) for _ in range(3000)]
    assert set(vals) == {0, 1, 2}
    assert stats.chisquare(np.bincount(vals)).pvalue > 1e-4
    assert s.randbelow(1) == 0
    assert repr(s) == "KeyedStream(<keyed>)"
