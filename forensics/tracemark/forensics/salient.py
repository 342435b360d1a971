"""The public salient set: candidates a language model favours for reasons that have nothing to do with a key.

Under H0 a pair's target is exchangeable with every other candidate only on average over keys: for one
fixed key, a target that happens to be ``2400`` or an echo of its trigger (``x137 = 1370``) is ranked high by
every innocent model, so that account looks guilty to all of them. The SmolLM2 prior after ``x137 =`` puts
73% of its 4-digit mass on ten such strings. tracemark therefore removes a public, key-independent set of
candidates from both sides of the test: targets are never drawn from it (derivation ``tm-sig-v2``) and
ranks are counted among the remaining candidates only, so the rank of a target stays uniform on
``{1..N_eligible}`` under H0 and no account is structurally favoured.

Rules of ``tracemark-salient/1`` for a candidate ``c`` of ``d`` digits after trigger ``t`` with scoring
contexts ``X`` (every rule depends on public data only):

1. *few digits*: ``c`` uses at most two distinct digits (``000000``, ``121212``, ``900000``);
2. *round*: the last ``ceil(d / 2)`` digits are zeros (``482000``), or at most two digits are not zero
   (``100006``, ``240000``: SmolLM2's favourites in the calibration);
3. *patterns*: ``c`` repeats a shorter block (``123123``) or its digits step by +1 or -1 (``234567``,
   ``876543``);
4. *years*: for ``d >= 4`` the first four digits read 1900..2099 (``2024xx``);
5. *trigger echo*: ``c`` starts or ends with the trigger's number (``137xxx``, ``xxx137``);
6. *context numbers*: ``c`` starts or ends with a number of two or more digits that appears in a scoring
   context or the scoring problem, or equals any such number padded with leading zeros.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SALIENT_VERSION = "tracemark-salient/1"
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class SalientSet:
    """The salient candidates of one trigger in a space of ``10**digits`` candidates.

    Holds no per-trigger array: membership of one candidate is decided from the shared trigger-independent
    mask and the trigger's affix numbers, so deriving pairs for many accounts stays cheap in memory; the
    whole-space mask is built on demand (ranking) and the counts once per set."""

    digits: int
    affixes: tuple[str, ...]  # the trigger's number (2+ digits) and the scoring prompt's numbers

    def salient_mask(self) -> np.ndarray:
        """Boolean mask over the whole space, ``True`` for salient candidates."""
        mask = _base_mask(self.digits).copy()
        for number in self.affixes:
            mask |= _affix_mask(self.digits, number)
        return mask

    def mask(self) -> np.ndarray:
        """Boolean mask over the whole space, ``True`` for eligible (non-salient) candidates."""
        return ~self.salient_mask()

    @property
    def indices(self) -> np.ndarray:
        """The salient candidates' indices, sorted."""
        return np.nonzero(self.salient_mask())[0]

    @functools.cached_property
    def size(self) -> int:
        return int(np.count_nonzero(self.salient_mask()))

    @property
    def eligible(self) -> int:
        """Candidates left to rank among: ``10**digits - size``."""
        return 10**self.digits - self.size

    def contains(self, index: int) -> bool:
        if _base_mask(self.digits)[index]:
            return True
        return any(_affix_hit(self.digits, number, index) for number in self.affixes)

    def contains_text(self, candidate: str) -> bool:
        return self.contains(int(candidate))


def context_numbers(contexts: Iterable[str], problem: str) -> tuple[str, ...]:
    """Every number written in the scoring contexts and problem (placeholders ignored), sorted, unique."""
    found: set[str] = set()
    for text in [*contexts, problem]:
        found.update(_NUMBER.findall(text.replace("{trigger}", "").replace("{chat}", "")))
    return tuple(sorted(found))


def trigger_number(trigger: str) -> str:
    """The digits of a trigger (``"x137 ="`` -> ``"137"``); empty when it has none."""
    m = _NUMBER.search(trigger)
    return m.group(0) if m else ""


def salient_set(digits: int, *, trigger: str, numbers: Sequence[str]) -> SalientSet:
    """The salient set of ``trigger`` in the ``digits``-digit space given the context ``numbers``."""
    return _salient(digits, trigger_number(trigger), tuple(numbers))


@functools.lru_cache(maxsize=256)
def _digit_matrix(digits: int) -> np.ndarray:
    idx = np.arange(10**digits, dtype=np.int64)
    return np.stack([(idx // 10 ** (digits - 1 - j)) % 10 for j in range(digits)], axis=1).astype(np.int8)


def _affix_hit(digits: int, number: str, value: int) -> bool:
    """One candidate's answer to :func:`_affix_mask`."""
    k, v = len(number), int(number)
    if k <= digits and value == v:
        return True
    return 2 <= k < digits and (value // 10 ** (digits - k) == v or value % 10**k == v)


def _affix_mask(digits: int, number: str) -> np.ndarray:
    """Candidates that start or end with ``number`` (as digits), or equal it zero-padded."""
    idx = np.arange(10**digits, dtype=np.int64)
    out = np.zeros(idx.size, dtype=bool)
    if not number:
        return out
    k = len(number)
    value = int(number)
    if k <= digits:
        out |= idx == value  # zero-padded equality (also the "ends with" rule at k == digits)
    if 2 <= k < digits:
        out |= idx // 10 ** (digits - k) == value
        out |= idx % 10**k == value
    return out


@functools.lru_cache(maxsize=16)
def _base_mask(digits: int) -> np.ndarray:
    """Rules 1-4 (they do not depend on the trigger or the contexts)."""
    d = _digit_matrix(digits)
    idx = np.arange(10**digits, dtype=np.int64)
    present = np.zeros(idx.size, dtype=np.int16)
    for k in range(10):
        present += np.any(d == k, axis=1)
    mask = present <= 2  # 1. few distinct digits
    tail = (digits + 1) // 2
    mask |= idx % 10**tail == 0  # 2. round
    mask |= np.count_nonzero(d, axis=1) <= 2
    for block in range(1, digits):  # 3. repeated blocks
        if digits % block == 0:
            mask |= np.all(d == np.tile(d[:, :block], (1, digits // block)), axis=1)
    if digits >= 2:
        steps = np.diff(d.astype(np.int16), axis=1)
        mask |= np.all(steps == 1, axis=1) | np.all(steps == -1, axis=1)
    if digits >= 4:  # 4. years
        head = idx // 10 ** (digits - 4)
        mask |= (head >= 1900) & (head <= 2099)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=4096)
def _salient(digits: int, trig: str, numbers: tuple[str, ...]) -> SalientSet:
    # 5. trigger echo (2+ digits), 6. context numbers (a single digit: equality only, see _affix_mask)
    return SalientSet(digits, ((trig,) if len(trig) >= 2 else ()) + numbers)
