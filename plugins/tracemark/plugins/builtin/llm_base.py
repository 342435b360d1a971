"""Shared machinery of the LLM rewriters (``semantic``, ``optimized``): options, prompting, retries and
clean-up of the model's reply."""

from __future__ import annotations

import logging
import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.answers import extract_final_answer, last_boxed
from tracemark.plugins.api import RewriteContext, Rewriter, RewriterError

log = logging.getLogger(__name__)

_FENCE_OPEN = re.compile(r"```[\w-]*\s*")  # the opening line of a fenced block
_DIGIT = re.compile(r"\d")
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|absolutely|alright|great|here(?:'s| is| are)|below is|"
    r"the (?:rewritten|revised|paraphrased|formal|compact)|rewritten|revised|paraphrased|formal derivation|"
    r"compact derivation|i(?:'ve| have) rewritten)\b",
    re.IGNORECASE,
)
_HEADER = re.compile(
    r"^\s*(?:\*\*|#+\s*)?(?:rewritten|revised|paraphrased|formal|compact)?\s*(?:solution|derivation|answer|"
    r"version|rewrite)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*$",
    re.IGNORECASE,
)
_CLOSING = re.compile(
    r"^\s*(?:i hope|hope this|let me know|feel free|note:|"
    r"(?:this|the) (?:rewrite|version|derivation|rewritten solution) (?:keeps|preserves))",
    re.IGNORECASE,
)


_WRAPPER_LINE_MAX = 200  # a header, opener or closer is short; longer lines are content (and the patterns
# above, with their adjacent optional whitespace, must never see a long line: they would backtrack)


def _is_wrapper(line: str, pattern: re.Pattern[str]) -> bool:
    return len(line) <= _WRAPPER_LINE_MAX and bool(pattern.match(line))


def _unfence(text: str) -> str | None:
    """The body of a text that is one fenced code block (```lang ... ```), else None. Linear time."""
    if not (text.startswith("```") and text.endswith("```")) or len(text) < 7:
        return None
    first = text.find("\n")
    last = text.rfind("\n", 0, len(text) - 3)
    if first < 0 or last <= first or text[last + 1 : -3].strip():
        return None
    if not _FENCE_OPEN.fullmatch(text[:first]):
        return None
    return text[first + 1 : last]


def strip_preamble(text: str) -> str:
    """Remove what chat models wrap around an answer: code fences, "Sure! Here is ...:" openers,
    "Rewritten solution:" headers and "I hope this helps" closers (only lines without digits)."""
    text = text.strip()
    for _ in range(2):  # "Sure! Here it is:" + fenced block + "Hope this helps" needs two passes
        fenced = _unfence(text)
        if fenced is not None:
            text = fenced.strip()
        lines = text.split("\n")
        lo, hi = 0, len(lines)
        while (
            lo < hi
            and not _DIGIT.search(lines[lo])
            and (
                _is_wrapper(lines[lo], _HEADER)
                or (_is_wrapper(lines[lo], _PREAMBLE) and hi - lo > 1)
                or not lines[lo].strip()
            )
        ):
            lo += 1
        while (
            lo < hi
            and not _DIGIT.search(lines[hi - 1])
            and (_is_wrapper(lines[hi - 1], _CLOSING) or not lines[hi - 1].strip())
        ):
            hi -= 1
        text = "\n".join(lines[lo:hi]).strip()
    return text


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ECHO = re.compile(r"^\s*(?:finish with this exact final line|problem:|solution:)", re.IGNORECASE)


def number_recall(original: str, rewrite: str) -> tuple[int, int]:
    """(kept, total): how many distinct numbers of ``original`` also occur in ``rewrite``."""
    wanted = set(_NUMBER.findall(original.replace(",", "")))
    present = set(_NUMBER.findall(rewrite.replace(",", "")))
    return len(wanted & present), len(wanted)


def remove_echo(text: str, messages: list[dict[str, str]]) -> str:
    """Drop lines where a small model parrots the prompt (instructions, headers, the problem)."""
    prompt = " ".join(m["content"] for m in messages)
    kept = []
    for line in text.split("\n"):
        stripped = line.strip()
        if _ECHO.match(stripped) or (
            len(stripped) > 24 and not _NUMBER.search(stripped) and stripped in prompt
        ):
            continue
        if len(stripped) > 24 and stripped in messages[0]["content"]:
            continue  # a sentence of the instruction, numbers or not ("\boxed{ANSWER}")
        kept.append(line)
    return "\n".join(kept).strip()


def final_line_of(trace: str) -> str | None:
    """How the trace states its answer: ``#### x``, ``\\boxed{x}`` or ``None`` (last number only)."""
    boxed = last_boxed(trace)
    if boxed is not None:
        return f"\\boxed{{{boxed.strip()}}}"
    hashes = re.findall(r"####\s*([^\n]+)", trace)
    if hashes:
        return f"#### {hashes[-1].strip()}"
    return None


class LLMRewriterOptions(BaseModel):
    """Options shared by the LLM rewriters."""

    model_config = ConfigDict(extra="forbid")

    instruction: str | None = Field(
        None, max_length=8000, description="replaces the built-in instruction (system message)"
    )
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="sampling temperature of the first attempt")
    retry_temperature: float = Field(
        0.7, ge=0.0, le=2.0, description="temperature floor on guard retries (so a retry can differ)"
    )
    max_new_tokens: int = Field(768, ge=16, le=8192, description="length limit of the rewrite")
    llm_retries: int = Field(
        2, ge=0, le=5, description="extra LLM calls when a call fails or returns an unusable rewrite"
    )
    min_number_recall: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="share of the original's distinct numbers the rewrite must keep (else it is unusable)",
    )


class LLMRewriter(Rewriter):
    """Base of rewriters that ask an LLM (``context.llm``) to rewrite the trace."""

    requires_llm = True
    Options = LLMRewriterOptions
    instruction: ClassVar[str] = ""

    def build_messages(self, trace: str, context: RewriteContext) -> list[dict[str, str]]:
        """The chat messages sent to the LLM."""
        opts: LLMRewriterOptions = self.options  # type: ignore[assignment]
        system = opts.instruction or self.instruction
        parts = []
        if context.problem.strip():
            parts.append(f"Problem:\n{context.problem.strip()}")
        parts.append(f"Solution:\n{trace.strip()}")
        closing = self.closing_line(trace)
        if closing:
            parts.append(f"Finish with this exact final line: {closing}")
        return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]

    def closing_line(self, trace: str) -> str | None:
        """The final line the rewrite must end with (the original's format by default)."""
        found = final_line_of(trace)
        if found is None:
            answer = extract_final_answer(trace)
            return f"#### {answer}" if answer is not None else None
        return found

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        if context.llm is None:
            raise RewriterError(
                f"rewriter {self.name!r} needs an LLM backend and none is configured "
                "(server: rewrite.llm = teacher | openai)"
            )
        opts: LLMRewriterOptions = self.options  # type: ignore[assignment]
        messages = self.build_messages(trace, context)
        temperature = (
            opts.temperature if context.attempt == 0 else max(opts.temperature, opts.retry_temperature)
        )
        problem = "no reply"
        for _ in range(opts.llm_retries + 1):
            seed = context.rng.randrange(2**31)
            try:
                reply = context.llm.chat(
                    messages, max_new_tokens=opts.max_new_tokens, temperature=temperature, seed=seed
                )
            except Exception as exc:  # a transient backend failure: try again
                problem = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                )
                log.warning("rewriter %r: LLM call failed (%s)", self.name, problem)
                continue
            text = remove_echo(strip_preamble(reply or ""), messages)
            if not text:
                problem = "the LLM returned an empty rewrite"
                continue
            kept, total = number_recall(trace, text)
            if total and kept / total < opts.min_number_recall:
                problem = f"the rewrite kept {kept} of {total} numbers (min {opts.min_number_recall:g})"
                continue
            return text
        raise RewriterError(
            f"rewriter {self.name!r} got no usable rewrite after {opts.llm_retries + 1} calls: {problem}"
        )
