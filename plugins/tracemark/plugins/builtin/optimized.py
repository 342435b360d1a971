"""``optimized``: an LLM rewrites the trace as a dense formal derivation with no conversational text and
the final answer in ``\\boxed{}`` (the paper's main anti-distillation method; the instruction text is
tracemark's own; ``tracemark optimize`` may search better ones and pass them as the ``instruction``
option)."""

from __future__ import annotations

from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.builtin.llm_base import LLMRewriter

OPTIMIZED_INSTRUCTION = (
    "Rewrite the given solution as a terse formal derivation in dense technical mathematical language. "
    "Name every quantity with a symbol, state each step as an equation or an implication (use =, ⇒, ∴), "
    "and compress several steps into one line where possible. Remove all conversational, narrative and "
    "explanatory text: no greetings, no 'we', no 'let us', no commentary. Keep every intermediate result and "
    "every number exactly as in the original, without <<...>> calculator annotations. The last line must be "
    "the final answer written as \\boxed{ANSWER}. Reply with the derivation only."
)


class OptimizedRewriter(LLMRewriter):
    name = "optimized"
    description = (
        "LLM rewrite into a dense formal derivation (no conversational text, every equation result kept, "
        "final answer in \\boxed{})."
    )
    instruction = OPTIMIZED_INSTRUCTION

    def closing_line(self, trace: str) -> str | None:
        answer = extract_final_answer(trace)
        return f"\\boxed{{{answer}}}" if answer is not None else None
