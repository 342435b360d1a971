"""Exact counts of lattice points under a hyperbola in a box, for the rank-product combination.

``count_products(t, ns)`` is ``#{(R_1..R_m) : 1 <= R_i <= n_i, R_1 * ... * R_m <= t}``, computed with Python
integers (exact for any size). It is the numerator of the exact null tail of the rank product
(:func:`tracemark.forensics.stats.combine_ranks`).

Algorithm
---------
* ``m = 1``: ``min(n, t)``. Saturation: when ``t >= prod n_i`` the whole box counts.
* ``m = 2``: the hyperbola method. Every pair under ``a * b <= t`` has ``a <= s`` or ``b <= s``
  (``s = isqrt(t)``), and all pairs with both ``<= s`` are under it, so the count is
  ``sum_{a <= min(s, n1)} min(n2, t // a) + sum_{b <= min(s, n2)} min(n1, t // b) - min(s, n1) min(s, n2)``:
  ``O(sqrt t)`` terms, summed with numpy ``int64`` when no partial sum can overflow, else in Python.
* ``m >= 3``: sum over the first coordinate ``a`` of the count of the rest under ``t // a``; values of
  ``a`` with the same quotient ``t // a`` form one block (``O(sqrt t)`` blocks), values with
  ``t // a >= prod(rest)`` saturate and form one block, and sub-counts are memoised (``t // a // b ==
  t // (a b)``, so the same thresholds recur). Coordinates are taken smallest box side first.

The work is metered (:data:`ELEMS_PER_UNIT` numpy elements or one :data:`PY_STEP` per Python-level step,
about 10 ns a unit): when it would pass ``max_work`` the count stops with :class:`WorkExceeded`, and
:func:`estimate_work` rejects the hopeless cases before any counting starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# work units, about 10 ns each on one core (the default budget of 2e7 units is a few tenths of a second).
# Measured on the development machine: one numpy int64 term (arange, floor division, sum) ~ 1 unit, a
# Python block step ~ 60 units (about 1 us with its recursive call), one numpy call's overhead ~ 300 units.
ELEMS_PER_UNIT = 1
PY_STEP = 60
NP_CALL = 300
_INT64_SAFE = 1 << 62
_NUMPY_MIN = 8  # fewer terms than this are summed in Python (a numpy call costs ~5 Python steps)


class WorkExceeded(Exception):
    """The exact count would take more than the allowed work (the caller falls back to a bound)."""


class WorkMeter:
    """Counts work units against ``limit``; one meter may be shared by several counts (a total budget)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, units: int) -> None:
        self.used += units
        if self.used > self.limit:
            raise WorkExceeded


def _count2(t: int, n1: int, n2: int, meter: WorkMeter) -> int:
    """``#{a <= n1, b <= n2 : a b <= t}`` by the hyperbola method."""
    if t <= 0:
        return 0
    if t >= n1 * n2:
        return n1 * n2
    s = math.isqrt(t)
    a_top, b_top = min(s, n1), min(s, n2)
    return _sum_min_quot(t, a_top, n2, meter) + _sum_min_quot(t, b_top, n1, meter) - a_top * b_top


def _numpy_ok(t: int, top: int, cap: int, elements: int) -> bool:
    """Sum with numpy int64: no overflow possible and enough terms to pay for the call."""
    return t < _INT64_SAFE and top * cap < _INT64_SAFE and elements > _NUMPY_MIN


def _sum_cost(t: int, top: int, cap: int) -> int:
    """The work units :func:`_sum_min_quot` will spend (at most; Python blocks may be fewer than terms)."""
    if top <= 0:
        return 0
    elements = top - min(top, t // cap)
    if elements == 0:
        return 0
    if _numpy_ok(t, top, cap, elements):
        return NP_CALL + elements // ELEMS_PER_UNIT
    return elements * PY_STEP


def _sum_min_quot(t: int, top: int, cap: int, meter: WorkMeter) -> int:
    """``sum_{a=1}^{top} min(cap, t // a)``."""
    if top <= 0:
        return 0
    sat = min(top, t // cap)  # a <= t // cap  <=>  t // a >= cap
    total = sat * cap
    if sat == top:
        return total
    lo = sat + 1
    if _numpy_ok(t, top, cap, top - lo + 1):
        meter.spend(NP_CALL + (top - lo + 1) // ELEMS_PER_UNIT)
        a = np.arange(lo, top + 1, dtype=np.int64)
        return total + int((np.int64(t) // a).sum())  # t // a < cap here, so no min needed
    a = lo
    while a <= top:  # blocks of equal quotients, in Python integers
        meter.spend(PY_STEP)
        q = t // a
        end = min(top, t // q)
        total += (end - a + 1) * q
        a = end + 1
    return total


def _blocks(t: int, lo: int, hi: int) -> int:
    """About how many blocks of equal ``t // a`` there are for ``a`` in ``lo..hi`` (``lo >= 1``): each
    ``a <= sqrt t`` has its own quotient; above, the quotients are fewer than the ``a``s."""
    if hi < lo:
        return 0
    s = math.isqrt(t)
    below = max(0, min(hi, s) - lo + 1)
    start = max(lo, s + 1)
    if hi < start:
        return below
    return below + min(hi - start + 1, t // start - t // hi + 1)


def estimate_work(t: int, ns: Sequence[int], *, _depth: int = 0) -> int:
    """About the work units of :func:`count_products` (used to refuse hopeless counts before starting).

    Two sides: the hyperbola sums' length. More: the first coordinate's blocks, in up to 24 geometric
    buckets, each times the estimate of the rest under the bucket's middle quotient (one level deep; below
    that, the rest's own first level only, so deep products are underestimated and the meter decides).
    """
    sides = sorted(int(n) for n in ns)
    m = len(sides)
    if m <= 1 or t >= math.prod(sides):
        return 1
    if m == 2:
        s = math.isqrt(t)
        return 1 + _sum_cost(t, min(s, sides[0]), sides[1]) + _sum_cost(t, min(s, sides[1]), sides[0])
    rest = math.prod(sides[1:])
    lo, hi = min(sides[0], t // rest) + 1, min(sides[0], t)
    if hi < lo:
        return 1
    if _depth >= 1:
        return _blocks(t, lo, hi) * (PY_STEP + 2 * NP_CALL)
    total, a0 = 0, lo
    ratio = (hi / lo) ** (1 / 24) if hi > lo else 2.0
    while a0 <= hi:
        a1 = min(hi, max(a0, int(a0 * ratio)))
        mid = math.isqrt(a0 * a1)
        total += _blocks(t, a0, a1) * (PY_STEP + estimate_work(t // mid, sides[1:], _depth=_depth + 1))
        a0 = a1 + 1
    return total


def count_products(
    t: int, ns: Sequence[int], *, max_work: int = 20_000_000, meter: WorkMeter | None = None
) -> int:
    """``#{R in [1..n_1] x ... x [1..n_m] : prod R_i <= t}`` exactly; :class:`WorkExceeded` past ``max_work``
    (or past ``meter``'s limit when a shared meter is given).

    ``t`` is an integer (any size), the sides positive integers.
    """
    sides = tuple(sorted(int(n) for n in ns))
    if any(n < 1 for n in sides):
        raise ValueError("box sides must be positive")
    t = int(t)
    meter = meter if meter is not None else WorkMeter(max_work)
    if meter.used + estimate_work(t, sides) > meter.limit:
        raise WorkExceeded
    suffix = [math.prod(sides[i:]) for i in range(len(sides) + 1)]
    memo: dict[tuple[int, int], int] = {}

    def count(level: int, tt: int) -> int:
        if tt <= 0:
            return 0
        if tt >= suffix[level]:
            return suffix[level]
        left = len(sides) - level
        if left == 1:
            return min(sides[level], tt)
        key = (level, tt)
        hit = memo.get(key)
        if hit is not None:
            return hit
        if left == 2:
            memo[key] = _count2(tt, sides[level], sides[level + 1], meter)
            return memo[key]
        n1, rest = sides[level], suffix[level + 1]
        sat = min(n1, tt // rest)
        total = sat * rest
        a, top = sat + 1, min(n1, tt)
        while a <= top:
            meter.spend(PY_STEP)
            q = tt // a
            end = min(top, tt // q)
            total += (end - a + 1) * count(level + 1, q)
            a = end + 1
        memo[key] = total
        return total

    return count(0, t)
