"""The distributional watermark channel: keyed, context-hashed green lists over a tokenizer's ids.

A *channel key* (32 secret bytes: the provider's or one account's, derived from the master secret in
``tracemark.forensics.keys``) splits the vocabulary, for each previous token ``p``, into a *green* part
holding each token ``t`` independently with probability ``gamma``:

    seed(key, p)   = first 8 bytes of HMAC-SHA256(key, "tm-channel-v1|ctx|" || p)   (p = -1: width 0)
    green(key,p,t) = splitmix64(seed(key, p) + t * 0x9E3779B97F4A7C15) < gamma * 2**64

Decoding adds ``delta`` to the logits of the green tokens of every key that applies to the row (the
provider key on every trace, the account key on that account's traces): the Kirchenbauer et al. (KGW)
scheme with a context of one token, which an edit disturbs only around itself.

Detection (radioactivity-style, Sander et al. 2024) scores the *distinct* (previous token, token) tuples
of a suspect's text: if the suspect never learnt from text decoded under ``key``, each distinct tuple is
green with probability ``gamma`` independently of every other (the seeds are a PRF of the key), so the
number of green tuples is exactly Binomial(n, gamma) over the key's randomness. Counting repeated tuples
would break that (a suspect repeats its own phrases), hence the deduplication.

This module holds only the keyed arithmetic; it never logs or prints a key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tracemark.foundation.errors import InvalidInput

DERIVATION = "tm-channel-v1"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
NO_CONTEXT = -1  # the "previous token" of a width-0 (unigram) channel


class ChannelError(InvalidInput):
    """Bad channel parameters or key."""


@dataclass(frozen=True)
class ChannelSpec:
    """The public parameters of the channel (logged with each key commitment, like the pair scheme).

    ``tokenizer`` names the vocabulary the green lists are over (a tokenizer fingerprint); detection
    re-tokenizes a suspect's text with it.
    """

    gamma: float = 0.25
    provider_delta: float = 1.5
    account_delta: float = 1.5
    context_width: int = 1
    tokenizer: str = ""
    derivation: str = DERIVATION

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise ChannelError(f"channel gamma must be in (0, 1), got {self.gamma}")
        for name in ("provider_delta", "account_delta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 20.0:
                raise ChannelError(f"channel {name} must be in [0, 20], got {value}")
        if self.context_width not in (0, 1):
            raise ChannelError(f"channel context_width must be 0 or 1, got {self.context_width}")
        if self.derivation != DERIVATION:
            raise ChannelError(f"unknown channel derivation {self.derivation!r}")

    def as_dict(self) -> dict:
        return {
            "gamma": self.gamma,
            "provider_delta": self.provider_delta,
            "account_delta": self.account_delta,
            "context_width": self.context_width,
            "tokenizer": self.tokenizer,
            "derivation": self.derivation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ChannelSpec:
        known = {k: data[k] for k in cls().as_dict() if k in data}
        return cls(**known)


@dataclass(frozen=True)
class ChannelKey:
    """One key of the channel: ``scope`` is ``"provider"`` or ``"account"``, ``name`` the account (or
    ``""`` for the provider), ``version`` the master-secret version it was derived from."""

    secret: bytes = field(repr=False)
    scope: str
    name: str = ""
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise ChannelError("a channel key needs at least 16 secret bytes")
        if self.scope not in ("provider", "account", "decoy"):
            raise ChannelError(f"unknown channel key scope {self.scope!r}")

    @property
    def label(self) -> str:
        """Public name of the key, e.g. ``account:alice@v1`` (never the secret)."""
        return f"{self.scope}:{self.name}@v{self.version}" if self.name else f"{self.scope}@v{self.version}"

    def __reduce__(self):  # never pickle key material by accident
        raise TypeError("channel keys cannot be pickled")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function on a uint64 array (wrapping arithmetic); overwrites ``x``."""
    if not isinstance(x, np.ndarray):  # a numpy scalar (0-d input): make it writable in place
        x = np.array(x, dtype=np.uint64)
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        np.right_shift(x, np.uint64(30), out=t)
        x ^= t
        x *= _M1
        np.right_shift(x, np.uint64(27), out=t)
        x ^= t
        x *= _M2
        np.right_shift(x, np.uint64(31), out=t)
        x ^= t
        return x


_SPREAD: dict[int, np.ndarray] = {}  # vocab size -> arange(vocab) * golden (read-only), for whole rows


def _spread(vocab_size: int) -> np.ndarray:
    spread = _SPREAD.get(vocab_size)
    if spread is None:
        with np.errstate(over="ignore"):
            spread = np.arange(vocab_size, dtype=np.uint64) * _GOLDEN
        spread.setflags(write=False)
        if len(_SPREAD) < 16:
            _SPREAD[vocab_size] = spread
    return spread


def _threshold(gamma: float) -> np.uint64:
    return np.uint64(min(int(gamma * 2.0**64), 2**64 - 1))


class GreenLists:
    """Green-list arithmetic for one key and ``gamma``, with a bounded cache of whole-vocabulary rows."""

    def __init__(self, key: ChannelKey, gamma: float, *, cache_rows: int = 512) -> None:
        self.key = key
        self.gamma = gamma
        self._threshold = _threshold(gamma)
        self._seeds: dict[int, np.uint64] = {}
        self._rows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_rows = cache_rows

    def seed(self, prev: int) -> np.uint64:
        """The 64-bit PRF seed of context ``prev``."""
        cached = self._seeds.get(prev)
        if cached is None:
            msg = f"{DERIVATION}|ctx|{int(prev)}".encode()
            digest = hmac.new(self.key.secret, msg, hashlib.sha256).digest()
            cached = np.uint64(int.from_bytes(digest[:8], "little"))
            if len(self._seeds) < 200_000:
                self._seeds[prev] = cached
        return cached

    def green(self, prev: int, tokens: np.ndarray) -> np.ndarray:
        """Boolean array: is each of ``tokens`` (int array) green after ``prev``?"""
        with np.errstate(over="ignore"):
            x = self.seed(prev) + np.asarray(tokens, dtype=np.uint64) * _GOLDEN
        return _mix(x) < self._threshold

    def _whole_row(self, prev: int, vocab_size: int) -> np.ndarray:
        """``green(prev, arange(vocab_size))`` without recomputing the token spread."""
        with np.errstate(over="ignore"):
            x = _spread(vocab_size) + self.seed(prev)
        return _mix(x) < self._threshold

    def row(self, prev: int, vocab_size: int) -> np.ndarray:
        """The green mask of the whole vocabulary ``[0, vocab_size)`` after ``prev`` (cached)."""
        cache_key = (prev, vocab_size)
        mask = self._rows.get(cache_key)
        if mask is not None:
            self._rows.move_to_end(cache_key)
            return mask
        mask = self._whole_row(prev, vocab_size)
        self._rows[cache_key] = mask
        if len(self._rows) > self._cache_rows:
            self._rows.popitem(last=False)
        return mask


def context_of(prev: int, width: int) -> int:
    """The context a green list is keyed on: the previous token, or nothing for width 0."""
    return NO_CONTEXT if width == 0 else int(prev)


def distinct_tuples(token_rows: Iterable[Sequence[int]], *, width: int = 1) -> set[tuple[int, int]]:
    """The distinct (context, token) tuples of tokenized texts; each row's first token has no context
    (it is skipped for width 1, since its predecessor was not in the scored text)."""
    tuples: set[tuple[int, int]] = set()
    for row in token_rows:
        ids = [int(t) for t in row]
        if width == 0:
            tuples.update((NO_CONTEXT, t) for t in ids)
        else:
            tuples.update(zip(ids[:-1], ids[1:]))
    return tuples


@dataclass(frozen=True)
class GreenCount:
    """How many of ``n`` distinct tuples are green under one key (the test statistic)."""

    key_label: str
    n: int
    green: int
    gamma: float

    @property
    def fraction(self) -> float:
        return self.green / self.n if self.n else 0.0


def count_green(lists: GreenLists, tuples: Iterable[tuple[int, int]]) -> GreenCount:
    """Count the green tuples among distinct ``(context, token)`` tuples, grouped by context."""
    by_context: dict[int, list[int]] = {}
    n = 0
    for ctx, tok in set(tuples):
        by_context.setdefault(ctx, []).append(tok)
        n += 1
    green = 0
    for ctx, toks in by_context.items():
        green += int(lists.green(ctx, np.asarray(toks, dtype=np.uint64)).sum())
    return GreenCount(key_label=lists.key.label, n=n, green=green, gamma=lists.gamma)


def row_bias(
    lists: Sequence[tuple[GreenLists, float]],
    prev: int,
    vocab_size: int,
    *,
    width: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray | None:
    """The additive logit bias (float32, length ``vocab_size``) of several keys after ``prev``; with
    ``out`` (a zeroed float32 array of that length) it is written there."""
    if not lists:
        return None
    ctx = context_of(prev, width)
    bias = np.zeros(vocab_size, dtype=np.float32) if out is None else out
    scratch = None
    for green_lists, delta in lists:
        if delta:
            scratch = np.empty(vocab_size, dtype=np.float32) if scratch is None else scratch
            # mask * delta then a dense add: same float32 values as ``bias[mask] += delta``, ~10x faster
            np.multiply(green_lists.row(ctx, vocab_size), np.float32(delta), out=scratch)
            bias += scratch
    return bias


def batch_bias(
    rows: Sequence[Sequence[tuple[GreenLists, float]] | None],
    prev: Sequence[int],
    vocab_size: int,
    *,
    width: int = 1,
) -> np.ndarray | None:
    """The ``(len(rows), vocab_size)`` float32 bias of a batch: row ``i`` gets :func:`row_bias` of
    ``rows[i]`` (its ``[(lists, delta), ...]``; ``None`` or ``[]``: no bias) after ``prev[i]``. ``None``
    when no row is biased. The one per-step computation every decoder adapter (transformers, vLLM) shares."""
    if len(rows) != len(prev):
        raise ChannelError(f"channel bias needs one previous token per row, got {len(prev)} for {len(rows)}")
    bias = np.zeros((len(rows), vocab_size), dtype=np.float32)
    touched = False
    for i, (p, lists) in enumerate(zip(prev, rows)):
        if lists and row_bias(lists, int(p), vocab_size, width=width, out=bias[i]) is not None:
            touched = True
    return bias if touched else None


class Keyring:
    """The green lists a decoder applies for each account: the provider key on every row, plus the
    account's own key when the caller is known. ``account_key(name)`` derives an account's key (the
    server passes the master secret's derivation); lists are cached for ``max_accounts`` accounts. Each
    cached row is ``vocab_size`` bytes: the row caches (``*_cache_rows``) bound the memory, e.g. a server
    keeps many rows for the provider key (every trace) and few per account."""

    def __init__(
        self,
        spec: ChannelSpec,
        provider: ChannelKey,
        account_key,
        *,
        max_accounts: int = 1024,
        provider_cache_rows: int = 512,
        account_cache_rows: int = 512,
    ) -> None:
        self.spec = spec
        self.provider = GreenLists(provider, spec.gamma, cache_rows=provider_cache_rows)
        self._account_key = account_key
        self._accounts: OrderedDict[str, GreenLists] = OrderedDict()
        self._max_accounts = max_accounts
        self._account_cache_rows = account_cache_rows

    def account(self, name: str) -> GreenLists:
        lists = self._accounts.get(name)
        if lists is None:
            lists = GreenLists(self._account_key(name), self.spec.gamma, cache_rows=self._account_cache_rows)
            self._accounts[name] = lists
            if len(self._accounts) > self._max_accounts:
                self._accounts.popitem(last=False)
        else:
            self._accounts.move_to_end(name)
        return lists

    def lists_for(self, account: str | None) -> list[tuple[GreenLists, float]]:
        """``[(lists, delta), ...]`` for a row decoded for ``account`` (``None``: provider key only)."""
        rows = [(self.provider, self.spec.provider_delta)]
        if account and self.spec.account_delta:
            rows.append((self.account(account), self.spec.account_delta))
        return rows


def tokenizer_fingerprint(tokenizer) -> str:
    """A public identifier of a tokenizer's vocabulary: 16 hex of SHA-256 over its sorted (token, id)
    pairs, so detection can check it re-tokenizes with the vocabulary the green lists were over."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256("\n".join(f"{tok}\t{i}" for tok, i in vocab).encode("utf-8")).hexdigest()
    return digest[:16]
