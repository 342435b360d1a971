"""``restructure``: a model-free anti-distillation rewriter (the embedded default).

It keeps every equation and the final answer but changes the *structure* a student would imitate
(in the spirit of PART, arXiv 2510.11545):

* each step's result is stated before its derivation: ``Natalia sold 48/2 = <<48/2=24>>24 clips`` becomes
  ``(1) 24 ⟸ 48/2 ▹ Natalia sold clips``; chains ``a = b = c`` become ``c ⟸ b ⟸ a``;
* GSM8K calculator annotations ``<<expr=result>>`` are turned into that notation (their result is kept);
* narrative self-talk ("Let me think.", "Wait, ...") and connective filler ("So", "First,", "We know
  that", ...) are dropped; sentences carrying numbers are always kept, compressed, as premises ``∵ ...``;
* the final answer closes the trace in the format it had: ``#### x``, ``∴ \\boxed{x}`` or ``∴ x``.

The transformation is a pure function of the trace (deterministic, no RNG).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.answers import boxed_spans, last_boxed
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError

# -- lexical building blocks -------------------------------------------------------------------------
# a number glued to a letter ("2x", "-1L", "5th") is not a number but a word: a coefficient, an ordinal
_NUM = r"(?<![\w.])-?\$?\d[\d,]*(?:\.\d+)?%?(?!\.?\w)|(?<![\w.])\$?\.\d+%?(?!\w)"
_OP = r"(?:[+\-*/×÷·^−]|\\times|\\cdot|\\div|(?<=\s)[xX](?=\s))"
_PURE_NUMBER = re.compile(rf"^\s*(?:{_NUM})\s*$")
_VALUE = re.compile(rf"^\s*(?:{_NUM})(?:\s*/\s*\d+)?\s*$")  # a number or a simple fraction
_HAS_OP = re.compile(_OP)
_ANNOTATION = re.compile(
    r"(?P<dollar>\$)?<<(?P<expr>[^<>=]*)=(?P<result>[^<>]*)>>(?P<shown>-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?)?"
)
_SENTINEL = "\x00"
# One pass of a tokenizer instead of one big "equation" regex: every pattern here matches in linear
# time (Python's regex engine holds the GIL, so a backtracking pattern would stall the whole server).
_TOKEN = re.compile(
    rf"(?P<num>{_NUM})|(?P<op>{_OP})|(?P<eq>=)|(?P<open>\()|(?P<close>\))|(?P<ann>\x00)|(?P<sp>\s+)"
    r"|(?P<word>[A-Za-z_][\w']*|.)",
    re.DOTALL,
)
_MATH_KINDS = frozenset({"num", "op", "eq", "open", "close", "ann", "sp"})
_BARE_ANNOTATION = re.compile(r"<<[^<>]*>>")
_HASH_LINE = re.compile(r"####[^\n]*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+(?=\S)")
_DIGIT = re.compile(r"\d")

_UNITS = r"(?:second|minute|hour|day|week|month|year)s?\b"
_LEADING_FILLER = re.compile(
    r"^(?:so|thus|therefore|hence|then|now|first(?:ly)?|second(?:ly)?|third(?:ly)?|next|finally|lastly|also|"
    r"and|but|plus|okay|ok|alright|all right|well|wait|hmm+|um+|right|great|good|yes|no|sure|actually|"
    r"in the beginning|to begin(?: with)?|to start|after that|this means(?: that)?|that means(?: that)?|"
    r"which means(?: that)?|we know(?: that)?|we are told(?: that)?|we have|we get|we find(?: that)?|"
    r"we can see(?: that)?|let's see|let me see|it follows(?: that)?|recall(?: that)?|note(?: that)?|"
    r"remember(?: that)?|since|because|given(?: that)?|"
    r"let(?:'s| me| us) (?:double[- ]check|check|compute|calculate|see|think|verify|find|figure out)"
    r"(?: this| that| it)?)\b[,:]?\s*",
    re.IGNORECASE,
)
_SELF_TALK = re.compile(
    r"^(?:let(?:'s| me| us)\b|i (?:need|will|should|think|can|have to|must|am|'ll|'m)\b|"
    r"we (?:need|will|should|must|can|want)\b|okay\b|ok\b|hmm+\b|wait\b|alright\b|to (?:solve|find|answer)\b|"
    r"the (?:problem|question) (?:asks|says|wants|is asking)\b|step \d+\b|double[- ]check|"
    r"that (?:seems|looks) (?:right|correct)|this (?:seems|looks) (?:right|correct)|"
    r"(?:so )?(?:the )?(?:final )?answer (?:is|=|:)|great\b|good\b|perfect\b|done\b)",
    re.IGNORECASE,
)
_TRAILING_CONNECTIVE = re.compile(
    r"(?<![\s,])[\s,]+(?:so|and|then|thus|hence|which is|which|is|are|was|were|equals?|gives?|to get|"
    r"we get|get|of|by|for|as|because|since|where|when|while)$",
    re.IGNORECASE,
)
_ANSWER_CLAUSE = re.compile(
    r"(?:^|[,;]\s*|\s+)(?:so |thus |therefore |hence )?(?:the )?(?:final )?answer (?:is|=|:)[^,;]*$",
    re.IGNORECASE,
)
_ARTICLES = re.compile(rf"\b(?:the|an|a)\s+(?=[A-Za-z]{{2}})(?!{_UNITS})", re.IGNORECASE)
_SOFTENERS = re.compile(r"\b(?:just|actually|basically|really|simply|exactly|already)\s+", re.IGNORECASE)
_PER_UNIT = re.compile(rf"(?<=\d)(%?)\s+(?:per|an?)\s+({_UNITS})", re.IGNORECASE)
_DANGLING_OPERATOR = re.compile(r"(?:\s?[+*/×÷·^]|\s[-–−]|(?<=\d)\s[xX])$")
_DOUBLED_WORD = re.compile(r"\b([A-Za-z]{2,})(?: \1\b)+", re.IGNORECASE)
_EQUALS_WORDS = re.compile(r"\b(?:is equal to|equals|is the same as)\b", re.IGNORECASE)


class RestructureOptions(BaseModel):
    """Options of ``restructure``."""

    model_config = ConfigDict(extra="forbid")

    style: Literal["arrow", "assign"] = Field(
        "arrow", description="'arrow': '24 ⟸ 48/2'; 'assign': '24 := 48/2'"
    )
    numbered: bool = Field(True, description="number the derived steps (1), (2), ...")
    gloss: bool = Field(True, description="keep a compressed word gloss after each step ('▹ ...')")
    max_chars: int = Field(200_000, ge=1, description="longer traces are refused (RewriterError)")
    keep_premises: bool = Field(
        True, description="keep number-bearing sentences without equations as '∵ ...'"
    )


@dataclass
class _Equation:
    result: str
    derivation: list[str]  # outermost first: "c ⟸ b ⟸ a" has derivation [b, a]
    as_is: str = ""  # an equation kept verbatim (no result-first form applies)
    label: str = ""  # a leading bare value that names the quantity ("Remaining 10 = 62,300/10 = 6230")


def _split_final(trace: str) -> tuple[str, str, str | None]:
    """(body, format, final text) mirroring ``extract_final_answer``'s precedence."""
    boxed = last_boxed(trace)
    if boxed is not None:
        return _unwrap_boxed(trace), "boxed", boxed.strip()
    hashes = re.findall(r"####\s*([^\n]+)", trace)
    if hashes:
        return _HASH_LINE.sub("", trace), "hashes", hashes[-1].strip()
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+", trace)
    if numbers:
        return trace, "plain", numbers[-1]
    return trace, "none", None


def _unwrap_boxed(text: str) -> str:
    """Replace every outermost ``\\boxed{x}`` by ``x`` (nested braces honoured) up to the first unclosed."""
    out, pos = [], 0
    for start, body_start, body_end in boxed_spans(text):
        if start < pos:
            continue
        if body_end < 0:
            break
        out.append(text[pos:start])
        out.append(text[body_start:body_end])
        pos = body_end + 1
    out.append(text[pos:])
    return "".join(out)


def _tidy_math(text: str) -> str:
    text = text.replace("\\times", "×").replace("\\cdot", "·").replace("\\div", "÷")
    text = re.sub(r"(?<=[\d)])\s*\*\s*(?=[\d($.])", " × ", text)
    text = re.sub(r"(?<=[\d)])\s+[xX]\s+(?=[\d($.])", " × ", text)
    return re.sub(r"\s+", " ", text).strip()


def _equation_from_chain(parts: list[str]) -> _Equation | None:
    segments: list[str] = []
    for segment in (s.strip() for s in parts):
        if not segments or re.sub(r"\s+", "", segment) != re.sub(r"\s+", "", segments[-1]):
            segments.append(segment)
    if len(segments) < 2 or not any(_HAS_OP.search(s) for s in segments):
        return None  # "2 = 2" or a partial match around words: not a derivation
    if len(segments) > 2 and _VALUE.match(segments[0]) and _VALUE.match(segments[-1]):
        middle = [_tidy_math(s) for s in reversed(segments[1:-1])]
        return _Equation(segments[-1], middle, label=segments[0])
    # a plain number is the result ("48/2 = 24": 24, not 48/2); then a simple fraction ("1 - 3/7 = 4/7")
    for value in (_PURE_NUMBER, _VALUE):
        if value.match(segments[-1]) and not value.match(segments[0]):
            return _Equation(segments[-1], [_tidy_math(s) for s in reversed(segments[:-1])])
        if value.match(segments[0]) and not value.match(segments[-1]):
            return _Equation(segments[0], [_tidy_math(s) for s in segments[1:]])
    return _Equation("", [], as_is=" = ".join(_tidy_math(s) for s in segments))


def _compress(text: str) -> str:
    text = _BARE_ANNOTATION.sub(" ", text)
    text = _EQUALS_WORDS.sub("is", text)  # not "=": "4/7 is equal to $24" is no equation
    text = _PER_UNIT.sub(lambda m: m.group(1) + "/" + m.group(2).lower(), text)
    text = re.sub(r"\s+", " ", text).strip()
    for _ in range(8):
        previous, text = text, _LEADING_FILLER.sub("", text).strip()
        if text == previous:
            break
    text = _ARTICLES.sub("", text)
    text = _SOFTENERS.sub("", text)
    text = re.sub(r"\(\s*\)|\\\(\s*\\\)|\\\[\s*\\\]|\$\s*\$", " ", text)
    text = re.sub(r"\s+", " ", text)  # no long blank runs below: keeps every pattern linear
    text = re.sub(r"\s+([,.;:!?])(?!\d)", r"\1", text)  # not " .5" -> ".5" ("5 x .01 = .05")
    text = _ANSWER_CLAUSE.sub("", text.rstrip(".!?;:, "))
    text = re.sub(r"\b(?:so|then|thus) and\b", "and", text, flags=re.IGNORECASE)
    for _ in range(8):
        previous = text
        text = re.sub(r"(?<![\s=,;:])(?:\s*[=,;:])+\s*$", "", text)
        text = _DANGLING_OPERATOR.sub("", text)  # "1,152 erasers ×", "4 houses * 3 gnomes -"
        text = _TRAILING_CONNECTIVE.sub("", text).strip()
        if text == previous:
            break
    text = re.sub(r"^\s*[=,;:]+\s*", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = text.rstrip(".!?;:, ").strip()
    if not re.search(r"[A-Za-z0-9]", text):
        return ""
    return text


def _gloss(sentence: str, rest: str) -> str:
    """The compressed words of ``sentence`` once its equations (``rest``: what is left) are out."""
    gloss = _compress(rest)
    if not _DOUBLED_WORD.search(sentence):  # "3 gnomes = <<4*3=12>>12 gnomes" left "3 gnomes gnomes"
        gloss = _DOUBLED_WORD.sub(r"\1", gloss)
    return gloss


@dataclass(slots=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup or "word", match.group()
        if kind == "num" and value.startswith("-"):
            previous = next((t for t in reversed(tokens) if t.kind != "sp"), None)
            if previous is not None and previous.kind in ("num", "close", "ann"):  # "36-5": minus, not -5
                tokens.append(_Tok("op", "-", match.start(), match.start() + 1))
                tokens.append(_Tok("num", value[1:], match.start() + 1, match.end()))
                continue
        tokens.append(_Tok(kind, value, match.start(), match.end()))
    return tokens


def _trim(segment: list[_Tok], brackets: bool = True) -> list[_Tok]:
    lo, hi = 0, len(segment)
    while lo < hi and segment[lo].kind in ("sp", "op", "close"):
        lo += 1
    while hi > lo and segment[hi - 1].kind in ("sp", "op", "open"):
        hi -= 1
    if not brackets:
        return segment[lo:hi]
    # an unmatched bracket at an edge of a balanced run is the text's: "(2 + 3 = 5)"
    opens = sum(t.kind == "open" for t in segment[lo:hi])
    closes = sum(t.kind == "close" for t in segment[lo:hi])
    while lo < hi and opens > closes and segment[lo].kind in ("open", "sp"):
        opens -= segment[lo].kind == "open"
        lo += 1
    while hi > lo and closes > opens and segment[hi - 1].kind in ("close", "sp"):
        closes -= segment[hi - 1].kind == "close"
        hi -= 1
    return segment[lo:hi]


def _cut_operator(raw: list[_Tok], seg: list[_Tok], *, leading: bool) -> bool:
    """Whether trimming ``raw`` to ``seg`` cut an operator off its start (``leading``) or end."""
    if not seg:
        return False
    edge = [t for t in raw if (t.end <= seg[0].start if leading else t.start >= seg[-1].end)]
    return any(t.kind == "op" for t in edge)


def _valid(segment: list[_Tok]) -> bool:
    """``open* operand close* (op open* operand close*)*`` over the non-space tokens."""
    expect_operand = True
    seen = False
    depth = 0
    for tok in segment:
        if tok.kind == "sp":
            continue
        depth += (tok.kind == "open") - (tok.kind == "close")
        if depth < 0:
            return False  # "1/3) = 28": the bracket opened in the words before
        if expect_operand:
            if tok.kind == "open":
                continue
            if tok.kind not in ("num", "ann"):
                return False
            expect_operand, seen = False, True
        elif tok.kind == "close":
            continue
        elif tok.kind == "op":
            expect_operand = True
        else:
            return False
    return seen and not expect_operand and depth == 0


def _render(segment: list[_Tok], notes: list[re.Match[str]], index: dict[int, int]) -> str:
    parts = []
    for tok in segment:
        parts.append(_annotation_result(notes[index[tok.start]]) if tok.kind == "ann" else tok.text)
    return "".join(parts).strip()


def _annotation_result(match: re.Match[str]) -> str:
    result = (match.group("shown") or match.group("result")).strip()
    if match.group("dollar") and not result.startswith("$"):
        result = "$" + result
    return result


def _parse_sentence(sentence: str) -> tuple[list[_Equation], str]:
    """Equations found in ``sentence`` (in order) and the remaining words."""
    notes = list(_ANNOTATION.finditer(sentence))
    text = _ANNOTATION.sub(_SENTINEL, sentence.replace(_SENTINEL, " "))
    tokens = _tokenize(text)
    ann_index = {t.start: i for i, t in enumerate(t for t in tokens if t.kind == "ann")}
    equations: list[_Equation] = []
    cuts: list[tuple[int, int, str]] = []  # (start, end, replacement) in ``text``

    def flush(group: list[list[_Tok]], lead: _Tok | None) -> None:
        anns = [t for seg in group for t in seg if t.kind == "ann"]
        if len(group) < 2 and not anns:
            return
        # "x = 3 + 4 = 7", "6 pages= <<7*6=42>>42": a dangling "=" before the equation goes with it
        start = lead.start if lead is not None else group[0][0].start
        last = [t for t in group[-1] if t.kind != "sp"]
        if len(last) == 1 and last[0].kind == "ann":
            note = notes[ann_index[last[0].start]]
            derivation = _tidy_math(note.group("expr"))
            if not _HAS_OP.search(derivation):  # "<<1148=1148>>": the visible text may hold it
                visible = [_render(seg, notes, ann_index) for seg in group[:-1]]
                derivation = next((_tidy_math(v) for v in reversed(visible) if _HAS_OP.search(v)), "")
            equations.append(_Equation(_annotation_result(note), [derivation] if derivation else []))
            cuts.append((start, group[-1][-1].end, " "))
            return
        if len(group) >= 2:
            eq = _equation_from_chain([_render(seg, notes, ann_index) for seg in group])
            if eq is not None:
                equations.append(eq)
                cuts.append((start, group[-1][-1].end, f" {eq.label} " if eq.label else " "))
                return
        for tok in anns:  # an annotation inside an expression: keep the text, state the result apart
            note = notes[ann_index[tok.start]]
            derivation = _tidy_math(note.group("expr"))
            equations.append(
                _Equation(_annotation_result(note), [derivation] if _HAS_OP.search(derivation) else [])
            )
            cuts.append((tok.start, tok.end, _annotation_result(note)))

    def process(run: list[_Tok], glued: bool = False) -> None:
        if not any(t.kind in ("num", "ann") for t in run):
            return  # spaces, operators, "=" or brackets only: no segment can be valid, nothing to flush
        segments: list[tuple[list[_Tok], _Tok | None]] = [([], None)]
        for t in run:
            if t.kind == "eq":
                segments.append(([], t))
            else:
                segments[-1][0].append(t)
        group: list[list[_Tok]] = []
        lead: _Tok | None = None
        balanced = sum(t.kind == "open" for t in run) == sum(t.kind == "close" for t in run)
        for number, (raw, eq_before) in enumerate(segments):
            seg = _trim(raw, balanced)
            # "X*2 - 40 = 250", "= 28 - x", "275 x = 33 * 100": an operator cut off a side means the
            # expression goes on into words (a variable): that side is not "2 - 40" / "28" / "275";
            # "(1/2)X": nor when a letter is glued to it
            cut = _cut_operator(raw, seg, leading=True) or _cut_operator(raw, seg, leading=False)
            cut = cut or (glued and number == len(segments) - 1)
            if not cut and _valid(seg):
                if not group:
                    lead = eq_before
                group.append(seg)
            else:
                flush(group, lead)
                group = []
        flush(group, lead)

    run: list[_Tok] = []
    for tok in [*tokens, _Tok("word", "", len(text), len(text))]:
        if tok.kind in _MATH_KINDS:
            run.append(tok)
            if tok.kind == "ann":  # an annotation ends its expression: "= <<3*4=12>>12 (15 minutes)"
                process(run)
                run = []
            continue
        glued = bool(run) and run[-1].kind != "sp" and run[-1].end == tok.start and tok.text[:1].isalpha()
        process(run, glued)
        run = []
    for tok in tokens:  # an annotation no equation took keeps its result in the text (never deleted)
        if tok.kind == "ann" and not any(start <= tok.start < end for start, end, _ in cuts):
            cuts.append((tok.start, tok.end, _annotation_result(notes[ann_index[tok.start]])))
    out, pos = [], 0
    for start, end, replacement in sorted(cuts):
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    rest = "".join(out).replace(_SENTINEL, " ")
    return equations, rest


class RestructureRewriter(Rewriter):
    name = "restructure"
    description = (
        "Model-free: states each step's result before its derivation, drops narrative filler, compresses "
        "to dense notation; keeps every equation and the final answer."
    )
    Options = RestructureOptions

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        limit = self.options.max_chars  # type: ignore[attr-defined]
        if len(trace) > limit:
            raise RewriterError(f"trace has {len(trace)} characters, more than max_chars={limit}")
        return restructure(trace, self.options)  # type: ignore[arg-type]


def restructure(trace: str, options: RestructureOptions | None = None) -> str:
    """The ``restructure`` transformation as a plain function."""
    opts = options or RestructureOptions()
    arrow = " ⟸ " if opts.style == "arrow" else " := "
    body, fmt, final = _split_final(trace.replace("\r\n", "\n"))
    lines_out: list[str] = []
    step = 0
    for line in body.split("\n"):
        line = line.strip()
        if not line:
            continue
        for sentence in _SENTENCE_SPLIT.split(line):
            sentence = sentence.strip()
            if not sentence:
                continue
            if len(sentence.split(maxsplit=2)) < 3 and "<<" not in sentence and not _DIGIT.search(sentence):
                continue  # fast path, same outcome: no equation, and a gloss under 3 words without digits
            equations, rest = _parse_sentence(sentence)
            gloss = _gloss(sentence, rest)
            if not equations:
                if not gloss:
                    continue  # only filler, or "the answer is 72" (restated by the closing line)
                if not _DIGIT.search(gloss) and (
                    _SELF_TALK.match(sentence) or _SELF_TALK.match(gloss) or len(gloss.split()) < 3
                ):
                    continue  # narrative self-talk without content
                if opts.keep_premises or not _DIGIT.search(gloss):
                    lines_out.append(f"∵ {gloss}")
                continue
            parts = []
            for eq in equations:
                if eq.as_is:
                    parts.append(eq.as_is)
                else:
                    parts.append(arrow.join([eq.result, *eq.derivation]) if eq.derivation else eq.result)
            step += 1
            text = "; ".join(parts)
            if opts.numbered:
                text = f"({step}) {text}"
            if opts.gloss and gloss:
                text += f" ▹ {gloss}"
            lines_out.append(text)
    if fmt == "hashes":
        lines_out.append(f"#### {final}")
    elif fmt == "boxed":
        lines_out.append(f"∴ \\boxed{{{final}}}")
    elif fmt == "plain":
        lines_out.append(f"∴ {final}")
    return "\n".join(lines_out) if lines_out else trace
