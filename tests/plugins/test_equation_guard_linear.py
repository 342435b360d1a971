"""The intermediate-result guard (``equations.check_rewrite``) and ``restructure`` stay linear on adversarial
traces (the 64k repeated units of tests/redteam/test_dos_patterns.py took 8-30 s through the guard: every
relation rebuilt the list of all tokens before it, and the longest valid side was searched by evaluating
every cut of a 64-token window). The side search agrees with its direct definition on random inputs."""

from __future__ import annotations

import random
import time
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracemark.plugins import equations
from tracemark.plugins.builtin.restructure import restructure

UNITS = [
    "<<1*2=2",
    "1 = 2. ",
    "a=1;",
    "1=",
    "1 + 1 = 2\n",
    "1+" * 31 + "1/0=",  # every suffix of the window parses, and fails only at its end
    "1+" * 31 + "1 1=",  # no suffix but the last number parses
    "=" + "1+" * 29 + "1/0+1",
    "=" + "2^" * 31 + "2",  # a power tower: the long prefixes fail
]


def _fill(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


def _evaluated_tokens(check, monkeypatch: pytest.MonkeyPatch) -> int:
    """Tokens the guard's evaluator reads while running ``check()``."""
    count = 0
    evaluate = equations._evaluate

    def counting(tokens, percent=100.0):
        nonlocal count
        count += len(tokens)
        return evaluate(tokens, percent)

    with monkeypatch.context() as patch:
        patch.setattr(equations, "_evaluate", counting)
        check()
    return count


@pytest.mark.parametrize("unit", UNITS)
def test_guard_evaluates_a_bounded_number_of_tokens_per_character(unit, monkeypatch):
    def extract(n: int) -> int:
        text = _fill(unit, n)
        return _evaluated_tokens(lambda: equations.extract_equations(text), monkeypatch)

    small, large = extract(4_000), extract(16_000)
    assert large <= 4.5 * max(small, 1), (small, large)  # linear: 4x the text, about 4x the work
    text = _fill(unit, 16_000)
    output = restructure(text)
    checked = _evaluated_tokens(lambda: equations.check_rewrite(text, output), monkeypatch)
    # measured: at most ~18 per character (a power tower); evaluating every cut of each 64-token window,
    # as the side search did, read 33-63
    assert checked <= 25 * (len(text) + len(output)), checked


@pytest.mark.parametrize("unit", ["<<1*2=2", "a=1;"])
def test_restructure_and_guard_scale_linearly(unit):
    def best(n: int, runs: int) -> float:
        text = _fill(unit, n)
        took = float("inf")
        for _ in range(runs):  # best of several: the machine is shared
            started = time.perf_counter()
            equations.check_rewrite(text, restructure(text))
            took = min(took, time.perf_counter() - started)
        return took

    small, large = best(4_000, 3), best(32_000, 2)
    # 8x the text: linear is ~8-10x here; the quadratic token scan this guards against was 60-160x
    assert large < 25 * small + 0.1, (small, large)


_TOKENS = st.sampled_from(
    [("num", "2"), ("num", "0"), ("num", "70"), ("num", "5%"), ("num", "1000000000000")]
    + [("op", o) for o in "+-*/^"]
    + [("open", "("), ("close", ")")]
)


def _direct_longest(tokens, *, suffix):
    """The definition: the longest cut (within the window) whose part evaluates."""
    n = len(tokens)
    span = range(max(0, n - equations._MAX_SEGMENT), n) if suffix else range(min(n, equations._MAX_SEGMENT), 0, -1)
    for cut in span:
        part = tokens[cut:] if suffix else tokens[:cut]
        if equations._valid(part):
            return part, cut
    return [], n if suffix else 0


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=80), st.booleans())
def test_longest_side_agrees_with_its_definition(tokens, suffix):
    assert equations._longest(tokens, suffix=suffix) == _direct_longest(tokens, suffix=suffix)


def test_longest_side_agrees_on_near_expressions():
    rng = random.Random(7)
    numbers = ["0", "1", "2", "3", "64", "70", "0.5", "5%", "1000000000", "10000000000"]
    for _ in range(1_500):
        tokens, operand = [], False
        for _ in range(rng.randint(1, 70)):
            if rng.random() < 0.1:  # a stray token
                token = rng.choice([("op", "^"), ("open", "("), ("close", ")"), ("num", "2"), ("op", "-")])
            elif operand:
                token = rng.choice([("op", rng.choice("+-*/^^")), ("close", ")")])
            else:
                token = rng.choice([("num", rng.choice(numbers)), ("open", "("), ("op", "-")])
            tokens.append(token)
            operand = token[0] in ("num", "close")
        for suffix in (True, False):
            assert equations._longest(tokens, suffix=suffix) == _direct_longest(tokens, suffix=suffix), tokens


def test_long_numbers_stay_out_of_the_shared_caches():
    digits = "9" * 100
    equations._number_cached.cache_clear()
    equations._number_float_cached.cache_clear()
    for _ in range(2):
        assert equations._number(digits) == Decimal(digits)
        assert equations._value([("num", digits), ("op", "+"), ("num", "1")]) == float(digits) + 1
    assert equations._number_cached.cache_info().currsize == 0
    assert equations._number_float_cached.cache_info().currsize == 1  # "1", not the 100 digits
    assert equations.check_rewrite(f"{digits} + 1 = 5", f"5 ⟸ {digits} + 1").missing == ()
