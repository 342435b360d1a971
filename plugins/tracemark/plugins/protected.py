"""Answer-bearing spans of a reasoning trace: the characters no token-level rewriter may touch.

:func:`protected_spans` finds them in the text; :func:`protected_mask` maps them onto tokens. The
proxy student's vocabulary filter uses :data:`QUANTITY_PIECE` so a replacement token cannot introduce a
quantity or operator word either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["QUANTITY_PIECE", "protected_mask", "protected_spans"]

_WORDISH = re.compile(r"[\w.,$%\-]+")  # linear: a run of word-ish characters (a number with its unit)
_DIGIT = re.compile(r"\d")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_BOXED = re.compile(r"\\boxed\s*\{")
_QUANTITY_WORDS = (
    r"zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?|"
    r"thousands?|millions?|billions?|half|halves|twice|thrice|once|double|doubled|triple|tripled|"
    r"quadruple|quarters?|thirds?|fourths?|fifths?|tenths?|dozens?|percent|pairs?|first|second|third|"
    r"none|no|not|all|each|every|per|more|less|fewer|than"
)
_OPERATOR_WORDS = r"[xX]|times|plus|minus|divided\s+by|multiplied\s+by|over|by|and|to|from"
_NUMBER_WORD = re.compile(rf"\b(?:{_QUANTITY_WORDS})\b", re.IGNORECASE)
# replacement tokens must not introduce quantities or operators either
QUANTITY_PIECE = re.compile(rf"^(?:{_QUANTITY_WORDS}|{_OPERATOR_WORDS}|divided|multiplied)$", re.IGNORECASE)
_OPERATOR_WORD = re.compile(rf"(?<=[\d)%])\s*(?:{_OPERATOR_WORDS})\s*(?=[\d($.])")


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``text`` that carry the answer and must stay unchanged.

    Every run of word-ish characters containing a digit (numbers, ``x137``, ``24%``, ``$5.50``), number
    and quantity words (``five``, ``half``, ``twice``, ``per``, ``more``, ``than``, ``not``...), operator
    words between numbers (``0.2 x 50``, ``3 times 4``), LaTeX commands, ``\\boxed{...}`` (nested braces
    honoured), ``<<...>>`` calculator annotations, ``####`` and everything after it, and the final
    non-empty line.
    """
    spans = [m.span() for m in _WORDISH.finditer(text) if _DIGIT.search(m.group())]
    spans += [m.span() for m in _LATEX_COMMAND.finditer(text)]
    spans += [m.span() for m in _NUMBER_WORD.finditer(text)]
    spans += [m.span() for m in _OPERATOR_WORD.finditer(text)]
    spans += [m.span() for m in _ANNOTATION.finditer(text)]
    for match in _BOXED.finditer(text):
        depth, end = 1, len(text)
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                end = i + 1
                break
        spans.append((match.start(), end))
    hashes = text.find("####")
    if hashes >= 0:
        spans.append((hashes, len(text)))
    stripped = text.rstrip()
    if stripped:
        spans.append((stripped.rfind("\n") + 1, len(text)))
    return sorted(spans)


def protected_mask(text: str, token_offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """For each token (its ``(start, end)`` character offsets in ``text``), whether it overlaps an
    answer-bearing span (:func:`protected_spans`). Empty-span tokens (specials) count as protected."""
    marked = bytearray(len(text) + 1)
    for start, end in protected_spans(text):
        marked[start:end] = b"\x01" * (end - start)
    out = []
    for start, end in token_offsets:
        out.append(end <= start or any(marked[start:end]))
    return out
