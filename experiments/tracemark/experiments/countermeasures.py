"""The adaptive distiller's cheap countermeasures: key-blind text transforms applied to every harvested
trace before distilling (issue 14, item 3). Pure functions of one trace:

* :func:`invert_restructure` undoes ``restructure``'s notation: ``(k) c ⟸ b ⟸ a ▹ gloss`` becomes
  ``gloss: a = b = c``, ``∵ s`` becomes ``s``, ``∴ x`` becomes ``So the answer is x`` (per line, the attack
  bench's ``canonical_line``; several equations of one step are turned round one by one);
* :func:`strip_suspicious` drops lines that look inserted: known watermark labels, a foreign
  ``letters+digits = number`` assignment, or a line without a digit that carries unusual symbols; the final
  answer line always stays;
* :func:`flip_result_first` turns any result-first equation the text states (``36 = 4*9``, whatever words
  surround it: ``restructure-stealth``'s plain-words form) round to ``4*9 = 36`` when it is arithmetically
  true, so no public phrasing of result-first reasoning survives the cleanup;
* :func:`normalise`: Unicode NFKC, ``× ÷ −`` as ``* / -``, ``⟸``/``:=`` as ``=``, numbering, bullets and
  fancy symbols removed, whitespace collapsed.

:data:`COUNTERMEASURES` names them (plus ``none`` and ``all``, the four in order) for
:func:`apply_countermeasure`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from fractions import Fraction

from tracemark.experiments.attack.transforms import _FOREIGN, LABEL_PATTERNS, canonical_line
from tracemark.foundation.problems import ProblemError, evaluate_expression
from tracemark.plugins.equations import extract_equations

__all__ = [
    "COUNTERMEASURES",
    "UnknownCountermeasure",
    "apply_countermeasure",
    "flip_result_first",
    "invert_restructure",
    "normalise",
    "plain_form",
    "strip_suspicious",
]

_MARKS = ("⟸", "▹", "∵", "∴", ":=")
_STEP = re.compile(r"^\s*\(\d+\)\s*")
_GLOSS = re.compile(r"\s*▹\s*(.*)$")
_NUMBERING = re.compile(r"^\s*(?:\(\d+\)|\d+[.)]|step\s+\d+\s*[:.)-]|[-*•·▪▸►‣◦]|[∵∴▹])\s+", re.IGNORECASE)
_PLAIN_SYMBOLS = set("+-*/=%$.,;:!?'\"()[]{}<>#&@_^~|\\`")
_DIGIT = re.compile(r"\d")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)%?")


class UnknownCountermeasure(ValueError):
    """The named countermeasure does not exist (one-line message)."""


def _invert_line(line: str) -> str:
    body = _STEP.sub("", line)
    if "⟸" not in body and ":=" not in body:
        return canonical_line(line)
    gloss_match = _GLOSS.search(body)
    gloss = gloss_match.group(1).strip() if gloss_match else ""
    equations = body[: gloss_match.start()] if gloss_match else body
    parts = [canonical_line(part) for part in equations.split("; ") if part.strip()]
    text = "; ".join(p for p in parts if p)
    return f"{gloss}: {text}" if gloss and text else (gloss or text)


def invert_restructure(text: str) -> str:
    """Undo ``restructure``'s notation (a trace without it is returned unchanged)."""
    if not any(mark in text for mark in _MARKS) and not _STEP.search(text):
        return text
    lines = [_invert_line(line) if line.strip() else line for line in text.split("\n")]
    return "\n".join(line for line in lines if line.strip() or not line)


_NUM = r"\d+(?:\.\d+)?"
_OP = r"\s*(?:[-+*/×÷·]|\bx\b)\s*"
_RESULT_FIRST = re.compile(
    rf"(?<![\w.+\-*/×÷·=])(?<![+\-*/×÷·=] )({_NUM})\s*=\s*((?:{_NUM}{_OP})+{_NUM})(?![\d.]*\d)(?!\s*=)"
)
_TO_PYTHON = str.maketrans({"×": "*", "÷": "/", "·": "*"})


def _value(expression: str) -> Fraction | None:
    try:
        return evaluate_expression(re.sub(r"\bx\b", "*", expression.translate(_TO_PYTHON)))
    except (ProblemError, ValueError, SyntaxError, ZeroDivisionError):
        return None


def flip_result_first(text: str) -> str:
    """``c = a op b`` (true) becomes ``a op b = c``, anywhere in ``text``; anything else is unchanged."""

    def flip(match: re.Match[str]) -> str:
        result, expression = match.group(1), match.group(2)
        value = _value(expression)
        if value is None or value != Fraction(result):
            return match.group(0)
        return f"{expression} = {result}"

    return _RESULT_FIRST.sub(flip, text)


def _unusual(line: str) -> bool:
    """Symbols a plain solution does not use (letters, digits, spaces and ASCII punctuation are usual)."""
    for char in line:
        if char.isalnum() or char.isspace() or char in _PLAIN_SYMBOLS:
            continue
        if unicodedata.category(char) in ("So", "Sm", "Sk", "Co", "Cn"):
            return True
    return False


def _suspicious(line: str) -> bool:
    if any(p.search(line) for p in LABEL_PATTERNS) or _FOREIGN.search(line):
        return True
    return not _DIGIT.search(line) and _unusual(line)


def strip_suspicious(text: str) -> str:
    """Drop lines that look inserted (labels, foreign assignments, digit-free lines with odd symbols);
    the last content line (the answer) is always kept."""
    lines = text.split("\n")
    content = [i for i, line in enumerate(lines) if line.strip()]
    last = content[-1] if content else -1
    kept = (line for i, line in enumerate(lines) if i == last or not line.strip() or not _suspicious(line))
    return "\n".join(kept)


def normalise(text: str) -> str:
    """NFKC, plain operators, ``⟸``/``:=`` as ``=``, no numbering/bullets/fancy symbols, tidy spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("⟸", "=").replace(":=", "=").replace("×", "*").replace("÷", "/").replace("−", "-")
    out = []
    for line in text.split("\n"):
        line = _NUMBERING.sub("", line)
        line = "".join(" " if _fancy(c) else c for c in line)
        line = re.sub(r"[ \t]+", " ", line).strip()
        if line:
            out.append(line)
    return "\n".join(out)


def _fancy(char: str) -> bool:
    return unicodedata.category(char) in ("So", "Sm", "Sk", "Co") and char not in "+<=>|~^"


def _all(text: str) -> str:
    return normalise(strip_suspicious(flip_result_first(invert_restructure(text))))


COUNTERMEASURES: dict[str, Callable[[str], str]] = {
    "none": lambda text: text,
    "invert": invert_restructure,
    "flip": flip_result_first,
    "strip": strip_suspicious,
    "normalise": normalise,
    "all": _all,
}


def apply_countermeasure(name: str, text: str) -> str:
    """Apply the countermeasure ``name`` (a key of :data:`COUNTERMEASURES`) to one trace."""
    try:
        fn = COUNTERMEASURES[name]
    except KeyError:
        raise UnknownCountermeasure(
            f"unknown countermeasure {name!r} (one of {', '.join(COUNTERMEASURES)})"
        ) from None
    return fn(text)


def plain_form(text: str) -> bool:
    """Whether every equation ``text`` states reads ``a op b ... = c``: derivations first, a plain number
    last (what an ordinary solution writes; ``restructure``'s ``c ⟸ a op b`` does not)."""
    for equation in extract_equations(text):
        *derivation, result = equation.sides
        if not _PLAIN_NUMBER.fullmatch(result) or any(_PLAIN_NUMBER.fullmatch(side) for side in derivation):
            return False
    return True
