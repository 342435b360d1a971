"""Final-answer extraction and normalisation shared by the server, the answer guard and benchmarks."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BOXED = re.compile(r"\\boxed\s*\{")
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, honouring nested braces."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def extract_final_answer(text: str) -> str | None:
    """The final answer of a trace: last ``\\boxed{}``, else last ``#### x``, else the last number."""
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1].strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form for comparison: numbers lose commas, units, ``$`` and trailing zeros."""
    if answer is None:
        return None
    text = answer.strip().replace("\\$", "").replace("$", "").replace("\\!", "")
    text = re.sub(r"\\text\{[^}]*\}", "", text)
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
