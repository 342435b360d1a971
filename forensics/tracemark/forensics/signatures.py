"""Keyed signature pairs (trigger, target) derived deterministically from an account key.

Derivation ``tm-sig-v1``: a counter-mode HMAC-SHA256 byte stream keyed by the account key, with a label
binding the derivation version, account, key version and candidate-space width
(``block_i = HMAC(account_key, label || be64(i))``). From that stream, for pair ``j = 0..m-1`` in order:

* trigger: a letter from :data:`TRIGGER_LETTERS` and an integer 10..999 (2-3 digits, no leading zero),
  rendered ``"x137 ="``; redrawn while it repeats an earlier trigger of the same account;
* target: a uniform member of the :class:`CandidateSpace` (exactly ``digits`` decimal digits, leading zeros
  allowed, so the space holds ``10**digits`` strings).

Derivation ``tm-sig-v2`` is the same stream with the label's version changed, except that a target drawn
from the trigger's public salient set (:mod:`~tracemark.forensics.salient`) is redrawn, so targets are
uniform over the trigger's eligible candidates.

Uniform integers are drawn by rejection sampling on the smallest enclosing power of two (no modulo
bias). The derivation is prefix-stable: the first ``m`` pairs do not change when more are derived.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tracemark.foundation.errors import InvalidInput

DERIVATION_VERSION = "tm-sig-v1"
DERIVATION_V2 = "tm-sig-v2"
TRIGGER_LETTERS = "abcdfghjkmnpqrstuvwxyz"
"""Trigger letters: lowercase, without ``e`` (reads as an exponent) and ``i``/``l``/``o`` (read as digits)."""
TRIGGER_MIN, TRIGGER_MAX = 10, 999
MAX_PAIRS = 1000


class SignatureError(InvalidInput):
    """Invalid arguments to a signature derivation or candidate-space operation."""


@dataclass(frozen=True)
class CandidateSpace:
    """All strings of exactly ``digits`` decimal digits (``"0000"`` .. ``"9999"`` for 4), leading zeros
    allowed. Each digit is one token for the tokenizers tracemark targets, so every candidate has the same
    token length, which keeps real targets and decoys exchangeable."""

    digits: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise SignatureError(f"candidate space digits must be an integer in 1..9, got {self.digits!r}")

    @property
    def size(self) -> int:
        return 10**self.digits

    def candidate(self, index: int) -> str:
        """The candidate with position ``index`` (0-based; equals its integer value)."""
        if not 0 <= index < self.size:
            raise SignatureError(f"candidate index {index} outside 0..{self.size - 1}")
        return f"{index:0{self.digits}d}"

    def candidates(self) -> list[str]:
        """Every candidate in index order."""
        return [f"{i:0{self.digits}d}" for i in range(self.size)]

    def contains(self, s: Any) -> bool:
        return isinstance(s, str) and len(s) == self.digits and s.isascii() and s.isdigit()

    def index(self, s: str) -> int:
        """Position of candidate ``s``; :class:`SignatureError` if ``s`` is not in the space."""
        if not self.contains(s):
            raise SignatureError(f"{s!r} is not a {self.digits}-digit candidate")
        return int(s)

    def sample(self, rng: Any, k: int, exclude: Iterable[str] = ()) -> list[str]:
        """``k`` distinct candidates drawn uniformly without replacement, none in ``exclude``.

        ``rng`` is a :class:`random.Random` (or anything with ``randrange``/``sample``) or a NumPy
        ``Generator``; the result is a deterministic function of the rng state.
        """
        excluded = {self.index(s) for s in exclude}
        available = self.size - len(excluded)
        if not 0 <= k <= available:
            raise SignatureError(f"cannot draw {k} candidates: only {available} available in the space")
        if hasattr(rng, "integers") and not hasattr(rng, "randrange"):  # numpy Generator
            draw = lambda n: int(rng.integers(0, n))  # noqa: E731
        else:
            draw = rng.randrange
        if 2 * (k + len(excluded)) > self.size:
            pool = [i for i in range(self.size) if i not in excluded]
            # partial Fisher-Yates with the same primitive as below
            for j in range(k):
                t = j + draw(len(pool) - j)
                pool[j], pool[t] = pool[t], pool[j]
            return [self.candidate(i) for i in pool[:k]]
        chosen: list[int] = []
        seen = set(excluded)
        while len(chosen) < k:
            i = draw(self.size)
            if i not in seen:
                seen.add(i)
                chosen.append(i)
        return [self.candidate(i) for i in chosen]


@dataclass(frozen=True, repr=False)
class SignaturePair:
    """One keyed (trigger, target) pair of an account. ``repr`` hides the trigger and target."""

    account: str
    key_version: int
    index: int
    trigger: str
    target: str
    derivation: str = DERIVATION_VERSION

    @property
    def pair_id(self) -> str:
        """Stable public id: a hash of (derivation, account, key version, index); reveals nothing keyed."""
        h = hashlib.sha256(
            f"{self.derivation}\x00{self.account}\x00{self.key_version}\x00{self.index}".encode()
        )
        return "sp-" + h.hexdigest()[:16]

    @property
    def text(self) -> str:
        """The pair as it appears in a trace, e.g. ``"x137 = 4821"``."""
        return f"{self.trigger} {self.target}"

    def commitment(self, nonce: bytes) -> str:
        """SHA-256 commitment to this pair's trigger and target under ``nonce`` (hex)."""
        body = f"{self.pair_id}\x00{self.trigger}\x00{self.target}".encode()
        return hashlib.sha256(nonce + body).hexdigest()

    def __repr__(self) -> str:
        return (
            f"SignaturePair(account={self.account!r}, key_version={self.key_version}, index={self.index}, "
            f"pair_id={self.pair_id!r})"
        )


class KeyedStream:
    """Deterministic byte stream: ``HMAC-SHA256(key, label || be64(counter))`` blocks, concatenated."""

    def __init__(self, key: bytes, label: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < 16:
            raise SignatureError("the account key must be at least 16 bytes")
        self._key = bytes(key)
        self._label = label
        self._counter = 0
        self._buffer = b""

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hmac.new(self._key, self._label + self._counter.to_bytes(8, "big"), "sha256").digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def randbelow(self, n: int) -> int:
        """Uniform integer in ``[0, n)`` by rejection sampling (no modulo bias)."""
        if n < 1:
            raise SignatureError("randbelow needs n >= 1")
        if n == 1:
            return 0
        bits = (n - 1).bit_length()
        nbytes = (bits + 7) // 8
        mask = (1 << bits) - 1
        while True:
            x = int.from_bytes(self.read(nbytes), "big") & mask
            if x < n:
                return x

    def __repr__(self) -> str:
        return "KeyedStream(<keyed>)"


def derive_pairs(
    account_key: bytes,
    *,
    account: str,
    key_version: int,
    m: int,
    space: CandidateSpace,
    derivation: str = DERIVATION_VERSION,
    exclude: Callable[[str], Any] | None = None,
) -> list[SignaturePair]:
    """Derive ``account``'s first ``m`` signature pairs under ``key_version`` (see module doc).

    ``exclude(trigger)`` (derivation ``tm-sig-v2`` only) returns the trigger's salient set, an object with
    ``contains(index)``; a target drawn from it is redrawn."""
    if not isinstance(account, str) or not account:
        raise SignatureError("account must be a non-empty string")
    if not isinstance(key_version, int) or key_version < 1:
        raise SignatureError(f"key_version must be a positive integer, got {key_version!r}")
    if not isinstance(m, int) or not 1 <= m <= MAX_PAIRS:
        raise SignatureError(f"m (pairs per account) must be an integer in 1..{MAX_PAIRS}, got {m!r}")
    if derivation not in (DERIVATION_VERSION, DERIVATION_V2):
        raise SignatureError(f"unknown derivation {derivation!r}")
    if (derivation == DERIVATION_V2) != (exclude is not None):
        raise SignatureError(f"derivation {DERIVATION_V2} (and only it) excludes a salient set")
    label = f"{derivation}\x00pairs\x00{account}\x00{key_version}\x00{space.digits}\x00".encode()
    stream = KeyedStream(account_key, label)
    n_numbers = TRIGGER_MAX - TRIGGER_MIN + 1
    used: set[str] = set()
    pairs: list[SignaturePair] = []
    for j in range(m):
        while True:
            letter = TRIGGER_LETTERS[stream.randbelow(len(TRIGGER_LETTERS))]
            number = TRIGGER_MIN + stream.randbelow(n_numbers)
            trigger = f"{letter}{number} ="
            if trigger not in used:
                used.add(trigger)
                break
        salient = exclude(trigger) if exclude is not None else None
        while True:
            index = stream.randbelow(space.size)
            if salient is None or not salient.contains(index):
                break
        pairs.append(SignaturePair(account, key_version, j, trigger, space.candidate(index), derivation))
    return pairs


def decoy_rng(seed: int | bytes | str) -> random.Random:
    """A :class:`random.Random` seeded from an int, bytes or str (SHA-256 of the text for non-ints)."""
    if isinstance(seed, int):
        return random.Random(seed)
    raw = seed.encode() if isinstance(seed, str) else bytes(seed)
    return random.Random(int.from_bytes(hashlib.sha256(raw).digest(), "big"))
