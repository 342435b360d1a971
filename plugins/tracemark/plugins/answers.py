"""Final-answer extraction and normalisation shared by the server, the answer guard and benchmarks.

Every function here runs in time linear in its input (a caller sends the trace): one left-to-right scan
matches all ``\\boxed{`` braces, and no pattern can backtrack over a long run.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["answers_match", "boxed_spans", "extract_final_answer", "last_boxed", "normalize_answer"]

_BOXED_OR_BRACE = re.compile(r"\\boxed\s*\{|[{}]")
_HASHES = re.compile(r"####\s*([^\n]+)")  # linear: a whitespace run ends at the next text
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_TEXT_OPEN = "\\text{"


def boxed_spans(text: str) -> list[tuple[int, int, int]]:
    """``(start, body_start, body_end)`` of every ``\\boxed{...}`` in order of ``start``, nested braces
    honoured; an unclosed one has ``body_end == -1``. One pass over openers and braces (linear time)."""
    if "\\boxed" not in text:
        return []
    found: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int] | None] = []  # an open \boxed{ (start, body start), or None for "{"
    for match in _BOXED_OR_BRACE.finditer(text):
        token = match.group()
        if token == "}":
            if stack:
                opened = stack.pop()
                if opened is not None:
                    found.append((opened[0], opened[1], match.start()))
        elif token == "{":
            stack.append(None)
        else:
            stack.append((match.start(), match.end()))
    found += [(opened[0], opened[1], -1) for opened in stack if opened is not None]
    found.sort()
    return found


def last_boxed(text: str) -> str | None:
    """Contents of the last closed ``\\boxed{...}`` (by start position), or ``None``."""
    closed = [span for span in boxed_spans(text) if span[2] >= 0]
    if not closed:
        return None
    _, body_start, body_end = closed[-1]
    return text[body_start:body_end]


def extract_final_answer(text: str) -> str | None:
    """The final answer of a trace: last ``\\boxed{}``, else last ``#### x``, else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _drop_text_commands(text: str) -> str:
    """Remove every ``\\text{...}`` (up to the next ``}``), like ``re.sub(r"\\\\text\\{[^}]*\\}", "")``."""
    out, pos = [], 0
    while True:
        start = text.find(_TEXT_OPEN, pos)
        if start < 0:
            break
        end = text.find("}", start + len(_TEXT_OPEN))
        if end < 0:
            break  # no "}" after this one, so none after any later one either
        out.append(text[pos:start])
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form for comparison: numbers lose commas, units, ``$`` and trailing zeros."""
    if answer is None:
        return None
    text = answer.strip().replace("\\$", "").replace("$", "").replace("\\!", "")
    text = _drop_text_commands(text)
    numbers = _NUMBER.findall(text)
    if len(numbers) == 1:
        try:
            value = Decimal(numbers[0].replace(",", ""))
        except InvalidOperation:
            return text.lower()
        normal = value.normalize()
        # Decimal('1E+2') -> '100'
        return format(normal, "f") if normal == normal.to_integral() else str(normal)
    return re.sub(r"\s+", " ", text).strip().lower() or None


def answers_match(original: str | None, rewritten: str | None) -> bool:
    """True when both answers exist and are equal after normalisation."""
    a, b = normalize_answer(original), normalize_answer(rewritten)
    return a is not None and a == b
