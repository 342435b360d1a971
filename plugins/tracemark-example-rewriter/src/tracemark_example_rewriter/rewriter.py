"""``numbered-steps``: label each reasoning step ``Step 1:``, ``Step 2:``, ... and leave the final answer
line exactly as it was.

A small but complete plugin: typed options (published as JSON schema), a pure transformation, and a
self-check that refuses (``RewriterError``) instead of returning a trace whose answer changed. tracemark
applies its own answer guard, time limit and fallback around every plugin anyway.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import API_VERSION, RewriteContext, Rewriter, RewriterError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_FINAL_MARKER = re.compile(r"####|\\boxed\s*\{")
_ALREADY_NUMBERED = re.compile(r"^\s*(?:step\s+\d+\s*[:.)-]|\(\d+\)|\d+[.)]\s)", re.IGNORECASE)


class NumberedStepsOptions(BaseModel):
    """Options of ``numbered-steps`` (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field("Step", min_length=1, max_length=24, pattern=r"^[^\d\n]+$", description="step label")
    start: int = Field(1, ge=0, le=10_000, description="number of the first step")
    split_sentences: bool = Field(
        False, description="treat each sentence of a one-paragraph trace as its own step"
    )


def _answer_line(lines: list[str]) -> int:
    """Index of the line that states the final answer (it and everything after stay untouched)."""
    for i in range(len(lines) - 1, -1, -1):
        if _FINAL_MARKER.search(lines[i]):
            return i
    for i in range(len(lines) - 1, -1, -1):  # "last number" traces: the last line with a digit
        if re.search(r"\d", lines[i]):
            return i
    return len(lines)


def number_steps(trace: str, options: NumberedStepsOptions | None = None) -> str:
    """Number the steps of ``trace`` (a pure function; the rewriter's whole behaviour)."""
    opts = options or NumberedStepsOptions()
    lines = trace.strip("\n").split("\n")
    if opts.split_sentences and len([line for line in lines if line.strip()]) == 1:
        lines = [part.strip() for part in _SENTENCE_END.split(lines[0].strip()) if part.strip()]
    final = _answer_line(lines)
    out, number = [], opts.start
    for i, line in enumerate(lines):
        if i >= final or not line.strip() or _ALREADY_NUMBERED.match(line):
            out.append(line)
            continue
        out.append(f"{opts.label} {number}: {line.strip()}")
        number += 1
    return "\n".join(out)


class NumberedStepsRewriter(Rewriter):
    # Required: a unique name, equal to the entry-point name in pyproject.toml.
    name = "numbered-steps"
    # The plugin API version this plugin was written against (same major as tracemark's = compatible).
    api_version = API_VERSION
    description = "Labels each reasoning step 'Step n:' and leaves the final answer line unchanged."
    Options = NumberedStepsOptions

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        rewritten = number_steps(trace, self.options)  # type: ignore[arg-type]
        before = extract_final_answer(trace)
        if before is not None and not answers_match(before, extract_final_answer(rewritten)):
            raise RewriterError("numbering would change the final answer; refusing")
        return rewritten
