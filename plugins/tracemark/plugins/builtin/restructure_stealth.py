"""``restructure-stealth``: ``restructure``'s reordering without its fixed notation.

Same parse as ``restructure`` (results before derivations, narrative filler dropped, every equation and
result kept), but written in ordinary words and symbols with phrasing drawn per trace from a seeded RNG:
no ``⟸ ▹ ∵ ∴``, no step numbers. Per trace it draws the multiplication sign, a few sentence templates
for steps with and without a gloss and for premises, whether steps share lines, and the answer's lead-in
(``#### x`` stays as it is). So no fixed character n-gram marks every trace, and no single regular
expression maps every trace back. Equations are written result first with ``=`` (``24 = 48/2``), which the
intermediate-result guard checks like ``restructure``'s ``⟸``.

The RNG is ``context.rng`` (the pipeline seeds it per trace and attempt) unless the ``seed`` option is set.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError
from tracemark.plugins.builtin.restructure import (
    _DIGIT,
    _DOUBLED_WORD,
    _SELF_TALK,
    _SENTENCE_SPLIT,
    _Equation,
    _gloss,
    _parse_sentence,
    _split_final,
)

_TIMES = (" × ", " * ", " x ", "*", "×", " · ")
_WITH_GLOSS = (
    "{G}: {e}.",
    "{e}, {g}.",
    "{e} ({g}).",
    "{G}, which gives {e}.",
    "{G}, so {e}.",
    "{G}; {e}.",
    "{G} with {e}.",
    "{G}. {E}.",
)
_WITHOUT_GLOSS = ("{E}.", "Then {e}.", "Next, {e}.", "That is {e}.", "We get {e}.", "Also {e}.")
_PREMISE = ("{G}.", "Given: {g}.", "We know {g}.", "Note: {g}.", "{G}, as stated.", "Here {g}.")
_ANSWER = {
    "boxed": (
        "The answer is \\boxed{{{x}}}.",
        "Answer: \\boxed{{{x}}}",
        "So \\boxed{{{x}}}.",
        "\\boxed{{{x}}}",
    ),
    "plain": ("The answer is {x}.", "Answer: {x}", "Result: {x}", "So the total is {x}."),
}


class StealthOptions(BaseModel):
    """Options of ``restructure-stealth``."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="fix the phrasing choices (default: the context's RNG)")
    max_chars: int = Field(200_000, ge=1, description="longer traces are refused (RewriterError)")
    keep_premises: bool = Field(True, description="keep number-bearing sentences without equations")


class _Style:
    """The phrasing of one trace, drawn once from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.times = rng.choice(_TIMES)
        self.with_gloss = rng.sample(_WITH_GLOSS, 3)
        self.without_gloss = rng.sample(_WITHOUT_GLOSS, 2)
        self.premise = rng.sample(_PREMISE, 2)
        self.per_line = rng.choice((1, 1, 2, 3))  # sentences per line
        self.answer = {kind: rng.choice(options) for kind, options in _ANSWER.items()}

    def equation(self, eq: _Equation) -> str:
        if eq.as_is:
            return self._sign(eq.as_is)
        return " = ".join(self._sign(part) for part in [eq.result, *eq.derivation])

    def _sign(self, text: str) -> str:
        return text.replace(" × ", self.times)

    def step(self, equations: list[_Equation], gloss: str) -> str:
        e = "; ".join(self.equation(eq) for eq in equations)
        template = self.rng.choice(self.with_gloss if gloss else self.without_gloss)
        return _fill(template, e=e, g=gloss)

    def fact(self, gloss: str) -> str:
        return _fill(self.rng.choice(self.premise), g=gloss)


def _fill(template: str, *, g: str = "", e: str = "") -> str:
    big = lambda s: s[:1].upper() + s[1:]  # noqa: E731
    return template.format(g=g, G=big(g), e=e, E=big(e))


def restructure_stealth(trace: str, rng: random.Random, *, keep_premises: bool = True) -> str:
    """The ``restructure-stealth`` transformation with the phrasing drawn from ``rng``."""
    style = _Style(rng)
    body, fmt, final = _split_final(trace.replace("\r\n", "\n"))
    sentences: list[str] = []
    for line in body.split("\n"):
        for sentence in _SENTENCE_SPLIT.split(line.strip()):
            sentence = sentence.strip()
            if not sentence:
                continue
            if len(sentence.split(maxsplit=2)) < 3 and "<<" not in sentence and not _DIGIT.search(sentence):
                continue
            equations, rest = _parse_sentence(sentence)
            gloss = _gloss(sentence, rest)
            if equations:
                step = style.step(equations, gloss)
                sentences.append(step if _DOUBLED_WORD.search(sentence) else _DOUBLED_WORD.sub(r"\1", step))
                continue
            if not gloss or (
                not _DIGIT.search(gloss)
                and (_SELF_TALK.match(sentence) or _SELF_TALK.match(gloss) or len(gloss.split()) < 3)
            ):
                continue
            if keep_premises or not _DIGIT.search(gloss):
                sentences.append(style.fact(gloss))
    lines = [" ".join(sentences[i : i + style.per_line]) for i in range(0, len(sentences), style.per_line)]
    if fmt == "hashes":
        lines.append(f"#### {final}")
    elif fmt in ("boxed", "plain"):
        lines.append(style.answer[fmt].format(x=final))
    return "\n".join(lines) if lines else trace


class StealthRestructureRewriter(Rewriter):
    name = "restructure-stealth"
    description = (
        "Model-free: restructure's reordering (results first, filler dropped) in plain words with phrasing "
        "drawn per trace; no fixed symbols or numbering."
    )
    Options = StealthOptions

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        opts: StealthOptions = self.options  # type: ignore[assignment]
        if len(trace) > opts.max_chars:
            raise RewriterError(f"trace has {len(trace)} characters, more than max_chars={opts.max_chars}")
        rng = random.Random(opts.seed) if opts.seed is not None else context.rng
        return restructure_stealth(trace, rng, keep_premises=opts.keep_premises)
