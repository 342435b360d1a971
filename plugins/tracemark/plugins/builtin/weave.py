"""The template weave of ``watermark``: where and how a signature pair is written into a trace.

The pair text itself (``x137 = 4821``: the trigger ``x137 =``, one space, the target) is what forensics
scores and is written verbatim. Everything around it is a keyed choice that varies from trace to trace,
drawn from a seed only the server can reproduce (the watermark derives it from the account's secret and
the trace id):

* **where**: one of the trace's line or sentence boundaries, or the end of one of its sentences (as a
  parenthetical), never on or after the line that states the final answer, never before a line or sentence
  that continues the previous one (``So ...``, ``= 24``, a line ending in ``:``), never inside a sentence;
* **how**: one of many phrasings of a *label* or *reference* (never an auxiliary constant or a definition
  ``Let x = n``), built from the trace's own quantity nouns ("Tag for the clips: x137 = 4821."), in the
  prose or formal (``⟸ ▹``) register of the trace.

All parsing here is linear in the trace length (it sees caller input).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

from tracemark.plugins.answers import answers_match, extract_final_answer

_FORMAL = re.compile(r"⟸|:=|^\(\d+\)|^∵", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z(\"'$])")  # a period etc. followed by space and a new sentence
_TOKEN = re.compile(r"[0-9][0-9,.]*|[A-Za-z][A-Za-z-]*")
_CONTINUES = re.compile(
    r"\s*(?:[=+\-*/×÷<>)\]]|\d|(?:so|thus|therefore|hence|this|that|these|those|it|its|which|and|but|or|"
    r"because|since|then|adding|subtracting|multiplying|dividing|together|altogether|plus|minus|times)\b)",
    re.IGNORECASE,
)
_OPEN_END = frozenset(":=+-*/×÷,([<")
_ANSWER_LINE = re.compile(r"####|\\boxed")

_STOP_WORDS = (
    "and the for per each more than times less with from that this into over total left then other them "
    "they their there what which when where will would have has had were been does make makes made gets "
    "got most much many some also just only like about after before of to in on at by is are was"
)
_STOP = frozenset(_STOP_WORDS.split())
INLINE_SHARE = 0.6  # how often the pair goes inside an existing sentence when the chosen line allows it
FALLBACK_NOUNS = ("items", "values", "steps", "amounts", "quantities", "totals", "counts", "figures")

# {p}: the pair text; {n}: a quantity noun of the trace. Labels and references, never definitions.
PROSE_SENTENCES = (
    "Tag for the {n}: {p}.",
    "For reference, the {n} record is {p}.",
    "The {n} are filed under {p}.",
    "Reference label {p} marks the {n}.",
    "Our worksheet lists the {n} entry as {p}.",
    "Bookkeeping note on the {n}: {p}.",
    "We index the {n} by {p}.",
    "Record {p} belongs to the {n}.",
    "Cross-reference for the {n}: {p}.",
    "The {n} card reads {p}.",
    "Note {p} as the {n} label.",
    "Catalogue entry for the {n}: {p}.",
    "Use {p} as the {n} reference.",
    "Label check for the {n}: {p}.",
    "The sheet for the {n} carries {p}.",
    "Filing code of the {n}: {p}.",
    "Keep {p} with the {n} notes.",
    "The {n} ticket shows {p}.",
    "Lookup key for the {n} is {p}.",
    "Source row for the {n}: {p}.",
)
PROSE_OPENERS = ("", "", "", "", "Aside: ", "Just for tracking, ", "For the record, ", "As an aside, ")
PROSE_INLINE = (
    " (ref. {p})",
    " (tag {p})",
    " (see {p})",
    ", filed as {p}",
    " (label {p})",
    " [{n}: {p}]",
    " (entry {p})",
    ", noted under {p}",
    " (record {p})",
    " (code {p})",
)
FORMAL_LINES = (
    "▹ {n} tag: {p}",
    "∵ label {p} ▹ {n}",
    "{p} ▹ {n} reference",
    "▹ ref {p} ({n})",
    "• {n} index: {p}",
    "∵ {n} record {p}",
    "▹ filed under {p} ▹ {n}",
    "({n} code) {p}",
    "▹ {n} entry {p}",
    "∴ see {p} for the {n}",
)
FORMAL_INLINE = (" ▹ ref {p}", " ({n} tag {p})", " ▹ label {p}", " [{p}]", " ▹ see {p}")


@dataclass(frozen=True)
class _Point:
    kind: str  # "line": a new line before line ``index``; "sentence": between two sentences; "inline"
    line: int  # index into the trace's lines
    offset: int = 0  # character offset in that line (sentence / inline points)


def weave_rng(seed: bytes | str | int) -> random.Random:
    """A :class:`random.Random` for one weave, derived from ``seed`` (keyed by the caller)."""
    raw = seed if isinstance(seed, bytes) else str(seed).encode()
    return random.Random(int.from_bytes(hashlib.sha256(b"tracemark-weave-v2\x00" + raw).digest(), "big"))


def quantity_nouns(text: str, *, limit: int = 8) -> list[str]:
    """The trace's own quantity nouns: words right after a number ("48 clips" -> ``clips``), most common
    first (a generic noun when there is none)."""
    after: Counter[str] = Counter()
    previous_end, previous_number = -1, False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0].isdigit():
            previous_end, previous_number = match.end(), True
            continue
        gap = match.start() - previous_end
        adjacent = previous_number and 0 < gap <= 2 and not text[previous_end : match.start()].strip()
        previous_number = False
        word = token.lower()
        if adjacent and token[0].islower() and word not in _STOP and 3 <= len(word) <= 20:
            after[word] += 1  # "48 clips"; not names, stop words or a word on the next line
    nouns = [w for w, _ in after.most_common(limit)]
    return nouns or list(FALLBACK_NOUNS)


def _open_end(line: str) -> bool:
    """Whether ``line`` ends mid-thought (``:``, ``=``, an operator, a comma, an open bracket)."""
    return line.rstrip()[-1:] in _OPEN_END


def _sentence_ends(line: str) -> list[int]:
    """Offsets just after each sentence end inside ``line`` (not the line's own end)."""
    return [m.end() for m in _SENTENCE_END.finditer(line)]


def _layout(trace: str) -> tuple[list[str], list[int]]:
    """(lines, indices of the content lines up to and including the line that states the answer)."""
    lines = trace.split("\n")
    content = [i for i, line in enumerate(lines) if line.strip()]
    for k in range(len(content) - 1, -1, -1):  # the answer line: the last with a number, #### or boxed
        line = lines[content[k]]
        if _ANSWER_LINE.search(line) or any(ch.isdigit() for ch in line):
            return lines, content[: k + 1]
    return lines, content


def _line_points(lines: list[str], content: list[int], k: int) -> list[_Point]:
    """The places a pair may go in or just before content line ``content[k]`` (module doc)."""
    i = content[k]
    line = lines[i]
    last = k == len(content) - 1  # the answer line
    points: list[_Point] = []
    if not _CONTINUES.match(line) and not (k and _open_end(lines[content[k - 1]])):
        points.append(_Point("line", i))
    ends = _sentence_ends(line)
    if last:
        ends = ends[:-1]  # the last sentence of the answer line states the answer
    for end in ends:
        if not _CONTINUES.match(line, end):
            points.append(_Point("sentence", i, end))
        points.append(_Point("inline", i, end - 1))  # before the sentence's own period
    if not last and not _open_end(line):
        stripped = line.rstrip()
        points.append(_Point("inline", i, len(stripped) - 1 if stripped[-1:] in ".!?" else len(stripped)))
    return points


def insertion_points(trace: str) -> list[_Point]:
    """Every place a pair may go (see the module doc), in trace order."""
    lines, content = _layout(trace)
    return [p for k in range(len(content)) for p in _line_points(lines, content, k)]


def _phrase(rng: random.Random, kind: str, formal: bool, pair: str, noun: str) -> str:
    if kind == "inline":
        return rng.choice(FORMAL_INLINE if formal else PROSE_INLINE).format(p=pair, n=noun)
    if formal:
        return rng.choice(FORMAL_LINES).format(p=pair, n=noun)
    body = rng.choice(PROSE_SENTENCES).format(p=pair, n=noun)
    opener = rng.choice(PROSE_OPENERS)
    if opener.endswith(", "):
        body = body[0].lower() + body[1:]
    return opener + body


def _apply(lines: list[str], point: _Point, text: str) -> str:
    out = list(lines)
    if point.kind == "line":
        indent = lines[point.line][: len(lines[point.line]) - len(lines[point.line].lstrip())]
        out.insert(point.line, indent + text)
    elif point.kind == "sentence":
        line = lines[point.line]
        head, tail = line[: point.offset].rstrip(), line[point.offset :].lstrip()
        out[point.line] = f"{head} {text} {tail}"
    else:
        line = lines[point.line]
        out[point.line] = line[: point.offset] + text + line[point.offset :]
    return "\n".join(out)


def weave_keyed(trace: str, pair: str, seed: bytes | str | int, *, problem: str = "") -> str:
    """``trace`` with ``pair`` written in at a keyed place and in a keyed phrasing (module doc).

    Deterministic in (``trace``, ``pair``, ``seed``, ``problem``); keeps every character of ``trace`` and
    its final answer. A trace with no eligible place gets the pair as a line of its own at the start."""
    rng = weave_rng(seed)
    formal = bool(_FORMAL.search(trace))
    nouns = quantity_nouns(problem + "\n" + trace if problem else trace)
    noun = rng.choice(nouns[:4])
    lines, content = _layout(trace)
    wanted = extract_final_answer(trace)
    for _ in range(8 if content else 0):  # a keyed line, then a keyed place in it (linear time)
        points = _line_points(lines, content, rng.randrange(len(content)))
        if not points:
            continue
        inline = [p for p in points if p.kind == "inline"]
        # inside a sentence that also carries live numbers most of the time: a filter that drops "lines
        # whose numbers are used nowhere else" misses it, and one that drops the whole sentence loses it
        point = rng.choice(inline if inline and rng.random() < INLINE_SHARE else points)
        woven = _apply(lines, point, _phrase(rng, point.kind, formal, pair, noun))
        if wanted is None or answers_match(wanted, extract_final_answer(woven)):
            return woven
    return _phrase(rng, "line", formal, pair, noun) + "\n" + trace.lstrip("\n")


def weave_contexts(trace: str, *, n: int = 4, seed: int = 0, problem: str = "") -> list[str]:
    """``n`` distinct scoring contexts that mirror this weave: ``trace`` (a typical solution) woven with a
    placeholder pair at public seeds ``seed, seed + 1, ...`` and cut just after the trigger, which becomes
    ``{trigger}`` (what forensics' scoring contexts end with). Public: no key enters."""
    marker = "QQTRIGGERQQ"
    out: list[str] = []
    for k in range(seed, seed + 50 * n):
        woven = weave_keyed(trace, f"{marker} 0", f"public-context-{k}", problem=problem)
        context = woven[: woven.index(marker)] + "{trigger}"
        if context not in out:
            out.append(context)
        if len(out) == n:
            break
    return out
