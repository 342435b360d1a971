"""Answer-bearing spans of a reasoning trace: the characters no token-level rewriter may touch.

:func:`protected_spans` finds them in the text; :func:`protected_mask` maps them onto tokens. The
proxy student's vocabulary filter uses :data:`QUANTITY_PIECE` so a replacement token cannot introduce a
quantity or operator word either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import accumulate

from tracemark.plugins.answers import boxed_spans

__all__ = ["QUANTITY_PIECE", "protected_mask", "protected_spans"]

_WORDISH = re.compile(r"[\w.,$%\-]+")  # linear: a run of word-ish characters (a number with its unit)
_DIGIT = re.compile(r"\d")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_QUANTITY_WORDS = (
    r"zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?|"
    r"thousands?|millions?|billions?|half|halves|twice|thrice|once|double|doubled|triple|tripled|"
    r"quadruple|quarters?|thirds?|fourths?|fifths?|tenths?|dozens?|percent|pairs?|first|second|third|"
    r"none|no|not|all|each|every|per|more|less|fewer|than"
)
_OPERATOR_WORDS = r"[xX]|times|plus|minus|divided\s+by|multiplied\s+by|over|by|and|to|from"
_WORD = re.compile(r"\w+")  # a word's run; it is a number word when the whole run is one (``\b...\b``)


_NUMBER_WORDS = frozenset(  # the words _QUANTITY_WORDS matches ("hundreds?" -> hundred, hundreds)
    form for word in _QUANTITY_WORDS.split("|") for form in {word.removesuffix("s?"), word.replace("s?", "s")}
)
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
    spans += [m.span() for m in _WORD.finditer(text) if m.group().lower() in _NUMBER_WORDS]
    spans += [m.span() for m in _OPERATOR_WORD.finditer(text)]
    spans += [m.span() for m in _ANNOTATION.finditer(text)]
    spans += [(start, len(text) if end < 0 else end + 1) for start, _, end in boxed_spans(text)]
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
    # Linear in the text and the tokens however the spans nest: +1/-1 at span edges, a running sum says
    # whether a character is covered, and a prefix count of covered characters answers each token.
    edges = [0] * (len(text) + 2)
    for start, end in protected_spans(text):
        edges[start] += 1
        edges[end] -= 1
    covered_before = [0, *accumulate(map(bool, accumulate(edges[: len(text)])))]
    out = []
    limit = len(text)
    for start, end in token_offsets:
        lo, hi = min(max(start, 0), limit), min(max(end, 0), limit)
        out.append(end <= start or covered_before[hi] > covered_before[lo])
    return out
