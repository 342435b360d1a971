"""``semantic``: an LLM paraphrases the trace, keeping its meaning, every number and the final answer
(the paper's first rewriting method; the instruction text is tracemark's own)."""

from __future__ import annotations

from tracemark.plugins.builtin.llm_base import LLMRewriter

SEMANTIC_INSTRUCTION = (
    "You rewrite worked solutions to math word problems. Paraphrase the solution you are given in your own "
    "words while keeping its meaning: keep every step in the same order, keep every number, equation and "
    "intermediate result exactly as written, and keep the final answer. Vary the wording and sentence "
    "structure, but do not add new reasoning, comments, headings or remarks about the rewriting. Reply with "
    "the rewritten solution only."
)


class SemanticRewriter(LLMRewriter):
    name = "semantic"
    description = "LLM paraphrase that keeps the meaning, every number and the final answer."
    instruction = SEMANTIC_INSTRUCTION
