"""The intermediate-result guard: a rewrite must state only true equations and keep every result.

Pure functions, linear time (one tokenizer pass, a recursive-descent evaluator over short segments):

* :func:`extract_equations` finds the equations a text states: ``a op b = c`` chains in plain text,
  ``restructure``'s result-first ``c ⟸ a op b`` / ``c := a op b`` forms, and GSM8K calculator annotations
  ``<<a*b=c>>``. Operators ``+ - * / x × ÷ · ^`` and ``−``; ``$``, thousands commas and ``%`` (= /100) in
  numbers. A side cut off by a variable (``x + 4 = 28``: the ``4`` is not the left side) is not taken.
* an equation is *true* when all its sides have the same value, within a relative 1e-6 or the precision of
  a side written as a plain number (``10/3 = 3.33`` and ``10/3 = 3.3`` are true, ``10/3 = 3.4`` is not).
* :func:`intermediate_results` are the numbers an input derives (annotation results and the plain-number
  sides of its equations but a chain's first); :func:`check_rewrite` says what a rewrite got wrong: false
  equations it *introduced* (one the input states as well is the input's, not the rewriter's) and results of
  the input its output no longer states.

The rewrite pipeline calls :func:`check_rewrite` on every attempt of a guarded step (see ``pipeline``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache

__all__ = [
    "EQUATION_GUARDED",
    "Equation",
    "GuardReport",
    "check_rewrite",
    "extract_equations",
    "false_equations",
    "guard_applies",
    "intermediate_results",
    "missing_results",
    "numbers_in",
    "stated_numbers",
    "number_value",
]

_NUMBER_TEXT = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+,\d{1,2}(?!\d|,\d)|\d+)(?:\.\d+)?%?|\$?\.\d+%?"
_DECIMAL_COMMA = re.compile(r"\$?\d+,\d{1,2}%?")  # "45 * 0,2 = 9"
_ANNOTATION = re.compile(r"<<(?P<expr>[^<>=]*)=(?P<result>[^<>]*)>>")
_TOKEN = re.compile(
    rf"(?P<num>(?<![\w.]){_NUMBER_TEXT}(?!\w)|(?<=[xX])\.\d+(?!\w))"
    r"|(?P<rel>⟸|⇐|:=|=)"
    r"|(?P<op>[+\-*/×÷·^−]|\\times|\\cdot|\\div|(?<=[\d\s)])[xX](?=[\s\d(.$]))"
    r"|(?P<open>\()|(?P<close>\))|(?P<sp>[ \t]+)|(?P<word>\w+|\S|\n)"
)
_NUMBER_ANYWHERE = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])\.\d+")
_OP_WORDS = frozenset({"of", "times", "by", "plus", "minus", "than", "multiplied", "divided", "per", "over"})
_OP_NAMES = {"×": "*", "x": "*", "X": "*", "·": "*", "\\times": "*", "\\cdot": "*", "÷": "/", "\\div": "/",
             "−": "-"}
_STEP_NUMBER = re.compile(r"^\s*\(\d+\)\s+")  # restructure's "(3) " step labels
_MAX_SEGMENT = 64  # tokens: longer "expressions" are not derivations a guard needs to check
_REL_TOL = 1e-6


def number_value(text: str) -> Decimal | None:
    """The value of a written number (``$1,200`` -> 1200, ``.5`` -> 0.5, ``0,2`` -> 0.2; ``%`` ignored)."""
    text = text.strip()
    if _DECIMAL_COMMA.fullmatch(text):
        text = text.replace(",", ".")
    cleaned = text.replace("$", "").replace(",", "").rstrip("%").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


# the same numbers come back in every equation, window and pass: read each written form once (short forms
# only, so that the caches, shared by every request, never hold a caller's long digit runs)
_CACHED_CHARS = 32
_number_cached = lru_cache(maxsize=4096)(number_value)


def _number(text: str) -> Decimal | None:
    return _number_cached(text) if len(text) <= _CACHED_CHARS else number_value(text)


def numbers_in(text: str) -> set[Decimal]:
    """Every number written in ``text`` (absolute values, normalised: ``24.0`` == ``24``)."""
    out = set()
    for match in _NUMBER_ANYWHERE.finditer(_ANNOTATION.sub(" ", text)):
        value = _number(match.group())
        if value is not None:
            out.add(abs(value).normalize())
    return out


@dataclass(frozen=True)
class Equation:
    """One stated equation: its sides in reading order (normalised text) and their values."""

    sides: tuple[str, ...]
    values: tuple[float, ...]
    tolerance: float
    text: str = field(default="", compare=False)
    # the values with every "%" ignored ("8/32*100 = 25%" is GSM8K's way of writing a percentage)
    plain_values: tuple[float, ...] | None = None

    @property
    def true(self) -> bool:
        """All sides equal within the tolerance (``%`` read as /100, or ignored throughout)."""
        return any(
            all(abs(v - values[0]) <= self.tolerance for v in values[1:])
            for values in (self.values, self.plain_values)
            if values is not None
        )

    def differ(self, i: int, j: int) -> bool:
        """Whether sides ``i`` and ``j`` differ under both readings of ``%``."""
        return all(
            abs(values[i] - values[j]) > self.tolerance
            for values in (self.values, self.plain_values)
            if values is not None
        )

    def pairs(self) -> set[frozenset[str]]:
        return {frozenset((a, b)) for i, a in enumerate(self.sides) for b in self.sides[i + 1 :] if a != b}


# -- evaluation --------------------------------------------------------------------------------------
class _Invalid(Exception):
    pass


def _number_float(text: str) -> float | None:
    """``number_value`` as a float, cached: a window's numbers are read again for each cut tried."""
    return _number_float_cached(text) if len(text) <= _CACHED_CHARS else _to_float(number_value(text))


def _to_float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@lru_cache(maxsize=4096)
def _number_float_cached(text: str) -> float | None:
    return _to_float(number_value(text))


_END = ("end", "")


def _evaluate(tokens: list[tuple[str, str]], percent: float = 100.0) -> float:
    """Value of ``tokens`` (kind, text) as an arithmetic expression; _Invalid when it is not one."""
    if not tokens or len(tokens) > _MAX_SEGMENT:
        raise _Invalid
    if len(tokens) == 1 and tokens[0][0] == "num":  # most sides: what the parse below does with one number
        number = _number_float(tokens[0][1])
        if number is None:
            raise _Invalid
        return number / (percent if tokens[0][1].endswith("%") else 1.0)
    toks = [*tokens, _END]  # the sentinel ends every loop below and fails ``atom``
    pos = 0

    def expr() -> float:
        nonlocal pos
        value = term()
        while (tok := toks[pos])[0] == "op" and tok[1] in "+-":
            pos += 1
            value = value + term() if tok[1] == "+" else value - term()
        return value

    def term() -> float:
        nonlocal pos
        value = unary()
        while (tok := toks[pos])[0] == "op" and tok[1] in "*/":
            pos += 1
            right = unary()
            if tok[1] == "*":
                value *= right
            elif right == 0:
                raise _Invalid
            else:
                value /= right
        return value

    def unary() -> float:
        nonlocal pos
        tok = toks[pos]
        if tok[0] == "op" and tok[1] == "-":
            pos += 1
            return -unary()
        base = atom()
        tok = toks[pos]
        if tok[0] == "op" and tok[1] == "^":
            pos += 1
            exponent = unary()
            if abs(exponent) > 64 or abs(base) > 1e9 or (base == 0 and exponent < 0):
                raise _Invalid
            try:
                result = base**exponent
            except (OverflowError, ZeroDivisionError):
                raise _Invalid from None
            if isinstance(result, complex):
                raise _Invalid
            return result
        return base

    def atom() -> float:
        nonlocal pos
        kind, text = toks[pos]
        pos += 1
        if kind == "num":
            value = _number_float(text)
            if value is None:
                raise _Invalid
            return value / (percent if text.endswith("%") else 1.0)
        if kind == "open":
            value = expr()
            if toks[pos][0] != "close":
                raise _Invalid
            pos += 1
            return value
        raise _Invalid

    value = expr()
    if pos != len(tokens):
        raise _Invalid
    return value


def _value(tokens: list[tuple[str, str]], percent: float = 100.0) -> float | None:
    try:
        return _evaluate(tokens, percent)
    except (_Invalid, RecursionError, OverflowError):
        return None


def _precision(text: str) -> float:
    """Half a unit of the last digit of a plain number (``3.33`` -> 0.005), scaled for ``%``."""
    digits = text.rstrip("%").split(".")
    half = 0.5 * 10.0 ** (-len(digits[1])) if len(digits) == 2 else 0.5
    return half / 100.0 if text.endswith("%") else half


def _side_text(tokens: list[tuple[str, str]]) -> str:
    parts = []
    for kind, text in tokens:
        if kind == "num" and _DECIMAL_COMMA.fullmatch(text):
            text = text.replace(",", ".")
        parts.append(_OP_NAMES.get(text, text).replace("$", "").replace(",", ""))
    return "".join(parts)


def _make(sides: list[list[tuple[str, str]]], text: str) -> Equation | None:
    if len(sides) < 2 or not any(k == "op" for side in sides for k, _ in side):
        return None  # "2 = 2", "Step 1 = 5": no derivation stated
    values = []
    for side in sides:
        value = _value(side)
        if value is None:
            return None
        values.append(value)
    ignored: tuple[float, ...] | None = None
    if any(t.endswith("%") for side in sides for _, t in side):
        again = [_value(side, 1.0) for side in sides]
        ignored = tuple(v for v in again if v is not None) if None not in again else None
    plain = [_precision(s[0][1]) for s in sides if len(s) == 1 and s[0][0] == "num"]
    scale = max(abs(v) for v in (*values, *(ignored or ())))
    tolerance = max(_REL_TOL * scale, 1e-9, *(p * (1 + 1e-9) for p in plain))
    sides_text = tuple(_side_text(s) for s in sides)
    return Equation(sides_text, tuple(values), tolerance, text, ignored)


def _valid(tokens: list[tuple[str, str]]) -> bool:
    return 0 < len(tokens) <= _MAX_SEGMENT and _value(tokens) is not None


def _longest(tokens: list[tuple[str, str]], *, suffix: bool) -> tuple[list[tuple[str, str]], int]:
    """The longest valid suffix (or prefix) of ``tokens`` and where it starts (ends).

    Only cuts the grammar accepts (:func:`_parsable_suffixes`, :func:`_parsable_prefixes`, one pass each)
    are evaluated, not every cut of the 64-token window; among suffixes a binary search finds the longest
    that evaluates (see :func:`_parsable_suffixes` for why that is exact). Prefixes are tried longest first:
    a long prefix that parses but fails (a power tower ``2^2^...^2``) still costs one evaluation each."""
    n = len(tokens)
    if suffix:
        cuts = _parsable_suffixes(tokens, max(0, n - _MAX_SEGMENT))  # longest first
        if cuts and _valid(tokens[cuts[0] :]):  # the usual case: the whole parsable run is the side
            return tokens[cuts[0] :], cuts[0]
        lo, hi = 1, len(cuts)
        while lo < hi:
            mid = (lo + hi) // 2
            if _valid(tokens[cuts[mid] :]):
                hi = mid
            else:
                lo = mid + 1
        return (tokens[cuts[lo] :], cuts[lo]) if lo < len(cuts) else ([], n)
    for cut in reversed(_parsable_prefixes(tokens[: min(n, _MAX_SEGMENT)])):
        if _valid(tokens[:cut]):
            return tokens[:cut], cut
    return [], 0


# The grammar :func:`_evaluate` accepts, as an automaton: expecting an operand, "-" (unary) and "(" keep
# expecting one and a number ends it; after an operand, ")" (closing an open bracket) keeps it ended and a
# binary operator expects the next. Accepted: an operand ended with every bracket closed.
_BINARY = frozenset("+-*/^")


def _parsable_prefixes(tokens: list[tuple[str, str]]) -> list[int]:
    """The lengths (ascending) of the non-empty prefixes of ``tokens`` :func:`_evaluate` can parse."""
    out: list[int] = []
    operand, depth = False, 0  # operand: after an operand (else expecting one)
    for index, (kind, text) in enumerate(tokens):
        if not operand:
            if kind == "num":
                operand = True
            elif kind == "open":
                depth += 1
            elif not (kind == "op" and text == "-"):
                break
        elif kind == "close" and depth > 0:
            depth -= 1
        elif kind == "op" and text in _BINARY:
            operand = False
        else:
            break
        if operand and depth == 0:
            out.append(index + 1)
    return out


def _parsable_suffixes(tokens: list[tuple[str, str]], start: int) -> list[int]:
    """The cuts ``c >= start`` (ascending: longest first) whose suffix ``tokens[c:]`` :func:`_evaluate` can
    parse, from one right-to-left pass.

    Among these, evaluating is monotone: when a suffix fails to evaluate (a division by zero, a power out of
    bounds, an unreadable number) every longer parsable suffix fails too, since each failing step of the
    shorter one (a number; a divisor or an exponent, which is the unary expression right of its operator;
    a power's base, the operand left of ``^``, closed within the suffix) is parsed and evaluated from the
    same tokens in the longer one. So the parsable suffixes that evaluate are the shortest ones, and the
    longest of them is found by binary search."""
    n = len(tokens)
    # from_operand[i] / from_expect[i]: tokens[i:] is accepted after an operand / when expecting one
    from_operand, from_expect = True, False
    # bracket depth before each token counted from ``start``: a suffix closes its brackets when the depth at
    # its end is the one at its start and never dips below it in between
    total = depth = sum((k == "open") - (k == "close") for k, _ in tokens[start:])
    lowest = depth  # the lowest depth at any position >= i
    cuts: list[int] = []
    for i in range(n - 1, start - 1, -1):
        kind, text = tokens[i]
        depth -= (kind == "open") - (kind == "close")  # depth before tokens[i]
        lowest = min(lowest, depth)
        expect = ((kind == "open" or (kind == "op" and text == "-")) and from_expect) or (
            kind == "num" and from_operand
        )
        after = (kind == "close" and from_operand) or (kind == "op" and text in _BINARY and from_expect)
        from_operand, from_expect = after, expect
        if expect and lowest == depth == total:
            cuts.append(i)
    cuts.reverse()
    return cuts


def _chains(text: str) -> list[Equation]:
    """Equations written in plain text (annotations must already be removed)."""
    tokens = [
        (kind, _OP_NAMES.get(m.group(), m.group()) if kind == "op" else m.group())
        for m in _TOKEN.finditer(text)
        if (kind := m.lastgroup or "word")
    ]
    equations: list[Equation] = []
    i, n = 0, len(tokens)
    while i < n:
        if tokens[i][0] != "rel":
            i += 1
            continue
        # a relation: collect the segments around consecutive relations of one run
        start = i
        while start > 0 and tokens[start - 1][0] not in ("word", "rel"):
            start -= 1
        segments: list[list[tuple[str, str]]] = [[t for t in tokens[start:i] if t[0] != "sp"]]
        j = i
        while j < n and tokens[j][0] == "rel":
            k = j + 1
            while k < n and tokens[k][0] not in ("word", "rel"):
                k += 1
            segments.append([t for t in tokens[j + 1 : k] if t[0] != "sp"])
            j = k
        # the token just before the run (a word or a relation, never a space: the scan above stopped
        # there); looked up, not rebuilt from every token so far, which made a long text quadratic
        words_before = tokens[start - 1 : start]
        glued = j < n and tokens[j][0] == "word" and tokens[j][1][:1].isalpha() and tokens[j - 1][0] != "sp"
        equations.extend(_chain(segments, words_before, tokens[start:j], glued))
        i = max(j, i + 1)
    return equations


def _chain(
    segments: list[list[tuple[str, str]]],
    before: list[tuple[str, str]],
    raw: list[tuple[str, str]],
    glued: bool = False,
) -> list[Equation]:
    """Equations of one run of ``=``-separated segments; ``glued``: a letter follows the run directly
    (``4000=(1/2)X``: the last side is not ``(1/2)``)."""
    first, cut = _longest(segments[0], suffix=True)
    dropped = segments[0][:cut]
    if first and (
        (dropped and dropped[-1][0] == "op")
        or (not dropped and before and before[0][0] == "word" and before[0][1].lower() in _OP_WORDS)
        or (not dropped and before and before[0][1] in "+-*/×÷^")
        or (not dropped and before and before[0][0] == "word" and first[0] == ("op", "-"))
        or (dropped and dropped[-1][0] in ("num", "close") and first[0] in (("op", "-"), ("open", "(")))
    ):
        first = []  # "x + 4 = 28", "20% of 30 = 6": the left side is cut off, not "4" / "30"
    sides = [first] if first else []
    out: list[Equation] = []
    text = "".join(t for _, t in raw).strip()
    for index, segment in enumerate(segments[1:], start=1):
        last = index == len(segments) - 1
        if last and glued:
            segment = segment[:-1]  # the operand the letter is glued to is not a side on its own
        if _valid(segment) and not (last and glued):
            sides.append(segment)
            continue
        part, end = _longest(segment, suffix=False)
        rest = segment[end:]
        if part and not (rest and rest[0][0] == "op"):
            sides.append(part)  # "= 12 (15 minutes)": the side is "12"
        equation = _make(sides, text)
        if equation is not None:
            out.append(equation)
        sides = []
        if not last:
            tail, tail_cut = _longest(segment, suffix=True)
            if tail and not (segment[:tail_cut] and segment[:tail_cut][-1][0] == "op"):
                sides = [tail]
    equation = _make(sides, text)
    if equation is not None:
        out.append(equation)
    return out


def extract_equations(text: str) -> list[Equation]:
    """Every equation ``text`` states (annotations ``<<a*b=c>>`` included), in reading order."""
    equations: list[Equation] = []
    for match in _ANNOTATION.finditer(text):
        chain = _chains(f"{match.group('expr')} = {match.group('result')}")
        equations.extend(chain)
    plain = _ANNOTATION.sub("", text)
    for line in plain.split("\n"):
        equations.extend(_chains(_STEP_NUMBER.sub("", line)))
    return equations


def false_equations(text: str, *, reference: str | None = None) -> list[Equation]:
    """The false equations of ``text``; with ``reference`` (the input of a rewrite) only those whose
    false pair of sides the reference does not state itself (the input's own slips are not the rewriter's)."""
    wrong = [e for e in extract_equations(text) if not e.true]
    if reference is None or not wrong:
        return wrong
    stated: set[frozenset[str]] = set()
    for equation in extract_equations(reference):
        stated |= equation.pairs()
    return [e for e in wrong if not _inherited(e, stated)]


def _inherited(equation: Equation, stated: set[frozenset[str]]) -> bool:
    for i, a in enumerate(equation.sides):
        for j in range(i + 1, len(equation.sides)):
            if equation.differ(i, j) and frozenset((a, equation.sides[j])) not in stated:
                return False
    return True


def intermediate_results(text: str) -> list[Decimal]:
    """The numbers ``text`` derives: annotation results and the plain-number sides of its equations but the
    first side of a longer chain (``Remaining 10 = 62,300/10 = 6230`` derives 6230, not 10)."""
    results: list[Decimal] = []
    seen: set[Decimal] = set()

    def add(raw: str) -> None:
        value = _number(raw)
        if value is not None and (key := abs(value).normalize()) not in seen:
            seen.add(key)
            results.append(key)

    for match in _ANNOTATION.finditer(text):
        add(match.group("result"))
    for equation in extract_equations(_ANNOTATION.sub("", text)):
        for index, side in enumerate(equation.sides):
            if index == 0 and len(equation.sides) > 2:
                continue
            if _NUMBER_ONLY.fullmatch(side):
                add(side)
    return results


_NUMBER_ONLY = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)%?")


def stated_numbers(text: str) -> set[Decimal]:
    """Numbers ``text`` states as values, not only as operands (``12 + 5 = 17`` states 17, not 12 or 5;
    ``there are 12 (15 minutes)`` states 12 and 15). Absolute values, normalised."""
    out: set[Decimal] = set()
    for line in _ANNOTATION.sub(" ", text).split("\n"):
        tokens = [(m.lastgroup or "word", m.group()) for m in _TOKEN.finditer(_STEP_NUMBER.sub("", line))]
        tokens = [t for t in tokens if t[0] != "sp"]
        for i, (kind, value) in enumerate(tokens):
            if kind != "num":
                continue
            # an operand has an operator with a number or bracket on its other side ("$18/week", "-5": not)
            operand = (i >= 2 and tokens[i - 1][0] == "op" and tokens[i - 2][0] in ("num", "close")) or (
                i + 2 < len(tokens) and tokens[i + 1][0] == "op" and tokens[i + 2][0] in ("num", "open")
            )
            number = _number(value)
            if not operand and number is not None:
                out.add(abs(number).normalize())
    return out


def missing_results(source: str, output: str) -> list[Decimal]:
    """Intermediate results of ``source`` that ``output`` no longer states: a result ``source`` writes as a
    value must be written as a value (being an operand of a later step does not count); one it writes only
    as an operand (``X + <<+10=10>>10``) must appear."""
    stated, present = stated_numbers(output), numbers_in(output)
    as_value = stated_numbers(_ANNOTATION.sub("", source))
    return [
        value
        for value in intermediate_results(source)
        if value not in (stated if value in as_value else present)  # "X + <<+10=10>>10": an operand there
    ]


@dataclass(frozen=True)
class GuardReport:
    """What :func:`check_rewrite` found."""

    false: tuple[Equation, ...]
    missing: tuple[Decimal, ...]

    @property
    def ok(self) -> bool:
        return not self.false and not self.missing

    def detail(self) -> str:
        """One line for a step's detail (no trace text beyond the offending equation)."""
        parts = []
        if self.false:
            shown = " = ".join(self.false[0].sides)
            parts.append(f"{len(self.false)} false equation(s), e.g. {shown[:80]!r}")
        if self.missing:
            values = ", ".join(str(v) for v in self.missing[:3])
            parts.append(f"{len(self.missing)} intermediate result(s) lost ({values})")
        return "; ".join(parts)


def check_rewrite(source: str, output: str) -> GuardReport:
    """Check ``output``, a rewrite of ``source``: false equations it introduced, intermediate results lost."""
    false = tuple(false_equations(output, reference=source))
    return GuardReport(false, tuple(missing_results(source, output)))


EQUATION_GUARDED = frozenset({"restructure", "restructure-stealth"})
"""Rewriters a pipeline checks with :func:`check_rewrite` unless configured otherwise."""


def guard_applies(setting: bool | Iterable[str] | None, name: str) -> bool:
    """Whether a pipeline configured with ``setting`` checks step ``name``: ``None`` (default) the
    :data:`EQUATION_GUARDED` rewriters, ``True`` every step, ``False`` none, a collection the named ones."""
    if setting is None:
        return name in EQUATION_GUARDED
    if isinstance(setting, bool):
        return setting
    return name in setting
