"""Key-blind attacks on a harvest: each maps a list of records to an attacked list, using only the harvest.

The unit an attack drops is a *segment*: a sentence of a line (a line is split at sentence ends), so a
pair woven into a one-line prose trace is removed without the rest of the line. A line left empty is
dropped. No attack ever drops a trace's last content line (the final answer).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

from tracemark.experiments.attack.harvest import HarvestRecord

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_ALNUM_DIGIT = re.compile(r"\b[A-Za-z]*\d[A-Za-z0-9]*\b")
_FOREIGN = re.compile(r"\b([A-Za-z]{1,4}\d{1,6})\s*(?:=|:=|is)\s*(\d[\d,]*)")

# Phrasings tracemark's watermark templates have used (the observation (1)); a distiller reads
# them off a handful of traces.
LABEL_PATTERNS = (
    re.compile(r"^\s*\((?:aux|ref)\)\s"),
    re.compile(r"∵\s*aux:"),
    re.compile(r"\bauxiliary (?:constant|tag|quantity)\b", re.IGNORECASE),
    re.compile(r"\breference index\b", re.IGNORECASE),
    re.compile(r"\bfor bookkeeping\b", re.IGNORECASE),
)


def _segments(line: str) -> list[str]:
    return _SENTENCE_END.split(line)


def _content_indices(lines: Sequence[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.strip()]


def drop_segments(trace: str, drop: Callable[[str, str], bool]) -> str:
    """Remove each sentence ``s`` of line ``l`` with ``drop(s, l)``; never the last content line."""
    lines = trace.split("\n")
    content = _content_indices(lines)
    last = content[-1] if content else -1
    out: list[str] = []
    for i, line in enumerate(lines):
        if i == last or not line.strip():
            out.append(line)
            continue
        segments = _segments(line)
        kept = [s for s in segments if not drop(s, line)]
        if len(kept) == len(segments):
            out.append(line)
        elif kept:
            lead = line[: len(line) - len(line.lstrip())]
            out.append(lead + " ".join(s.strip() for s in kept))
    return "\n".join(out)


def _map(records: Iterable[HarvestRecord], fn: Callable[[HarvestRecord], str]) -> list[HarvestRecord]:
    return [r.with_trace(fn(r)) for r in records]


# -- (1)-(4): filters ---------------------------------------------------------------------------------
def label_filter(records: Sequence[HarvestRecord]) -> list[HarvestRecord]:
    """(1) Drop sentences carrying a known tracemark watermark phrasing or label."""
    return _map(
        records, lambda r: drop_segments(r.trace, lambda s, _: any(p.search(s) for p in LABEL_PATTERNS))
    )


def _prompt_words(prompt: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z0-9]+", prompt)}


def foreign_variable_filter(records: Sequence[HarvestRecord]) -> list[HarvestRecord]:
    """(2) Drop sentences defining ``letters+digits = number`` whose name is not in the problem."""

    def attacked(r: HarvestRecord) -> str:
        words = _prompt_words(r.prompt)
        return drop_segments(
            r.trace, lambda s, _: any(m.group(1).lower() not in words for m in _FOREIGN.finditer(s))
        )

    return _map(records, attacked)


def _numbers(text: str) -> list[str]:
    return [n.replace(",", "") for n in _NUMBER.findall(text)]


def dead_constant_filter(records: Sequence[HarvestRecord]) -> list[HarvestRecord]:
    """(3) Drop sentences whose numbers are all used nowhere else (not in the problem, no other line)."""

    def attacked(r: HarvestRecord) -> str:
        lines = r.trace.split("\n")
        per_line = [Counter(_numbers(line)) for line in lines]
        total = sum(per_line, Counter())
        prompt_numbers = set(_numbers(r.prompt))

        def dead(segment: str, line: str) -> bool:
            nums = _numbers(segment)
            if not nums:
                return False
            line_count = Counter(_numbers(line))
            # "elsewhere": any other line of the trace or the prompt
            return all(total[n] == line_count[n] and n not in prompt_numbers for n in nums)

        return drop_segments(r.trace, dead)

    return _map(records, attacked)


def _orphans(r: HarvestRecord) -> set[str]:
    """Digit-bearing tokens (>= 3 chars) of a trace that occur in exactly one line and not in its prompt."""
    where: dict[str, set[int]] = defaultdict(set)
    for i, line in enumerate(r.trace.split("\n")):
        for tok in _ALNUM_DIGIT.findall(line):
            if len(tok) >= 3:
                where[tok.lower()].add(i)
    prompt = {t.lower() for t in _ALNUM_DIGIT.findall(r.prompt)}
    return {t for t, lines in where.items() if len(lines) == 1 and t not in prompt}


def recurring_token_filter(
    records: Sequence[HarvestRecord], *, min_traces: int = 3, min_orphan_share: float = 0.9
) -> list[HarvestRecord]:
    """(4) Learn digit-bearing tokens that recur over ``>= min_traces`` traces but each time sit in one
    line of their trace (and not in its problem); drop the sentences carrying them."""
    orphan_df: Counter[str] = Counter()
    any_df: Counter[str] = Counter()
    for r in records:
        orphan_df.update(_orphans(r))
        any_df.update({t.lower() for t in _ALNUM_DIGIT.findall(r.trace) if len(t) >= 3})
    learned = {t for t, n in orphan_df.items() if n >= min_traces and n >= min_orphan_share * any_df[t]}
    return drop_learned(records, learned)


def drop_learned(records: Sequence[HarvestRecord], learned: set[str]) -> list[HarvestRecord]:
    """Drop sentences carrying any of ``learned`` tokens (unless the token is in the record's prompt)."""
    if not learned:
        return list(records)

    def attacked(r: HarvestRecord) -> str:
        banned = learned - {t.lower() for t in _ALNUM_DIGIT.findall(r.prompt)}
        return drop_segments(r.trace, lambda s, _: any(t.lower() in banned for t in _ALNUM_DIGIT.findall(s)))

    return _map(records, attacked)


# -- (5), (6): diffs ----------------------------------------------------------------------------------
def _line_diff(a: str, b: str) -> tuple[set[str], float]:
    """Content lines of ``a`` absent from ``b`` and the share of ``a``'s lines that ``b`` also has."""
    la = [x.strip() for x in a.split("\n") if x.strip()]
    lb = {x.strip() for x in b.split("\n") if x.strip()}
    if not la:
        return set(), 0.0
    only = {x for x in la if x not in lb}
    return only, 1.0 - len([x for x in la if x in only]) / len(la)


def _diff_attack(
    records: Sequence[HarvestRecord], groups: dict, *, min_shared: float, learn: bool
) -> list[HarvestRecord]:
    drop: dict[int, set[str]] = defaultdict(set)
    learned: set[str] = set()
    for idx in groups.values():
        if len(idx) < 2:
            continue
        for i in idx:
            for j in idx:
                if i == j:
                    continue
                only, shared = _line_diff(records[i].trace, records[j].trace)
                if only and shared >= min_shared:
                    drop[i] |= only
                    prompt = {t.lower() for t in _ALNUM_DIGIT.findall(records[i].prompt)}
                    for line in only:
                        learned |= {t.lower() for t in _ALNUM_DIGIT.findall(line) if len(t) >= 3} - prompt

    def attacked(i: int, r: HarvestRecord) -> str:
        lines = r.trace.split("\n")
        content = _content_indices(lines)
        last = content[-1] if content else -1
        return "\n".join(x for k, x in enumerate(lines) if k == last or x.strip() not in drop[i])

    out = [r.with_trace(attacked(i, r)) if drop[i] else r for i, r in enumerate(records)]
    return drop_learned(out, learned) if learn else out


def account_diff(
    records: Sequence[HarvestRecord], *, min_shared: float = 0.5, learn: bool = True
) -> list[HarvestRecord]:
    """(5) Two-account diff: for a problem asked by several accounts, drop the lines of a trace that
    another account's trace lacks (when at least ``min_shared`` of the lines agree), then drop every
    line in the harvest carrying a digit-bearing token learnt from those lines (``learn``)."""
    by_problem: dict[str, list[int]] = defaultdict(list)
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        if (r.problem_id, r.account) not in first:  # one trace per account per problem
            first[(r.problem_id, r.account)] = i
            by_problem[r.problem_id].append(i)
    return _diff_attack(records, by_problem, min_shared=min_shared, learn=learn)


def repeat_diff(
    records: Sequence[HarvestRecord], *, min_shared: float = 0.5, learn: bool = True
) -> list[HarvestRecord]:
    """(6) Same-account repeat diff: one account asked the same problem twice (new trace ids); the
    lines that differ between its traces are dropped, and the digit-bearing tokens they carry learnt."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r.account, r.problem_id)].append(i)
    return _diff_attack(records, groups, min_shared=min_shared, learn=learn)


# -- (7): canonicalise tracemark's restructure notation -------------------------------------------------
_STEP = re.compile(r"^\s*\(\d+\)\s*")
_GLOSS = re.compile(r"\s*▹\s*(.*)$")


def canonical_line(line: str) -> str:
    """``(k) c ⟸ b ⟸ a ▹ gloss`` -> ``gloss: a = b = c``; ``c := a`` -> ``a = c``; ``∵ s`` -> ``s``;
    ``∴ x`` -> ``So the answer is x``."""
    text = _STEP.sub("", line)
    stripped = text.strip()
    if stripped.startswith("∵"):
        return stripped.lstrip("∵").strip()
    if stripped.startswith("∴"):
        return "So the answer is " + stripped.lstrip("∴").strip()
    gloss = ""
    m = _GLOSS.search(text)
    if m:
        gloss, text = m.group(1).strip(), text[: m.start()]
    for arrow in ("⟸", ":="):
        if arrow in text:
            parts = [p.strip() for p in text.split(arrow)]
            text = " = ".join(reversed(parts))
            break
    text = text.strip()
    return f"{gloss}: {text}" if gloss and text else (gloss or text)


def canonicalize(records: Sequence[HarvestRecord]) -> list[HarvestRecord]:
    """(7) Rewrite tracemark's ``restructure`` notation back into ordinary derivations."""
    marks = ("⟸", "▹", "∵", "∴", ":=")

    def attacked(r: HarvestRecord) -> str:
        if not any(m in r.trace for m in marks) and not _STEP.search(r.trace):
            return r.trace
        return "\n".join(canonical_line(x) if x.strip() else x for x in r.trace.split("\n"))

    return _map(records, attacked)


# name -> (function, one-line description); paraphrase lives in its own module (it needs an LLM)
ATTACKS: dict[str, tuple[Callable[[Sequence[HarvestRecord]], list[HarvestRecord]], str]] = {
    "labels": (label_filter, "drop known tracemark phrasings/labels"),
    "foreign-var": (foreign_variable_filter, "drop 'letters+digits = number' not named in the problem"),
    "dead-constant": (dead_constant_filter, "drop sentences whose numbers are used nowhere else"),
    "recurring-token": (recurring_token_filter, "drop tokens recurring across traces, one line each"),
    "account-diff": (account_diff, "two accounts, same problem: drop the differing lines (+ learnt)"),
    "repeat-diff": (repeat_diff, "same account, same problem twice: drop differing lines (+ learnt)"),
    "canonicalize": (canonicalize, "turn ⟸ ▹ ∵ (k) back into ordinary derivations"),
}
