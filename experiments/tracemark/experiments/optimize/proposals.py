"""New candidate instructions: the OPRO meta-prompt, parsing an LLM's reply, asking for ``n`` new ones."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from tracemark.experiments.optimize.records import CandidateResult, Event, no_events, norm_instruction
from tracemark.plugins.builtin.llm_base import strip_preamble

MIN_PROPOSAL_CHARS = 40
MAX_PROPOSAL_CHARS = 2000

META_SYSTEM = (
    "You design instructions for a rewriting model. The rewriting model receives a math word problem and "
    "its step-by-step solution, and rewrites the solution following your instruction. A small student "
    "model is then fine-tuned on the rewritten solutions. A good instruction makes the student learn as "
    "little as possible (low gain), while the rewrite keeps every number and the same final answer as "
    "\\boxed{ANSWER}."
)


def meta_prompt(scored: Sequence[CandidateResult], *, top_k: int = 8) -> list[dict[str, str]]:
    """The OPRO meta-prompt: the ``top_k`` best qualified instructions, worst first, with their gains."""
    qualified = sorted((r for r in scored if r.score is not None), key=lambda r: r.score, reverse=True)
    shown = qualified[-top_k:]
    lines = ["Previous instructions and the student's gain (lower is better), worst first:", ""]
    for r in shown:
        lines.append(f"<INS>{r.instruction}</INS>")
        lines.append(f"gain: {r.score:.4f}; rewrites kept: {r.kept}/{r.n}")
        lines.append("")
    rejected = [r for r in scored if r.score is None][-2:]
    for r in rejected:
        lines.append(f"<INS>{r.instruction}</INS>")
        lines.append(f"rejected: {r.reason}")
        lines.append("")
    lines.append(
        "Write one new instruction, different from all of the above, that should give a lower gain. "
        "It must still require keeping every number and ending with the final answer as \\boxed{ANSWER}. "
        "Reply with the new instruction only, between <INS> and </INS>."
    )
    return [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


_INS = re.compile(r"<INS>(.*?)(?:</INS>|$)", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"^[(\"']?[A-Za-z][a-z'-]*[)\"']?[,.;:!?)]*$")
_LEAD = re.compile(r"^\s*(?:new\s+)?instruction\s*:\s*", re.IGNORECASE)


def parse_proposal(reply: str) -> str | None:
    """The instruction in an LLM reply (inside ``<INS>...</INS>`` if present), or ``None`` if unusable:
    too short or long, mostly non-words, or not asking for the ``\\boxed{}`` answer line."""
    found = [m.group(1) for m in _INS.finditer(reply or "") if m.group(1).strip()]
    text = found[0] if found else strip_preamble(reply or "")
    text = _LEAD.sub("", text.replace("</INS>", "").replace("<INS>", "")).strip().strip('"').strip()
    text = re.sub(r"[ \t]+", " ", text)
    tokens = text.split()
    words = [t for t in tokens if _WORD.match(t)]
    if not MIN_PROPOSAL_CHARS <= len(text) <= MAX_PROPOSAL_CHARS or len(words) < 6:
        return None
    if len(words) < 0.6 * len(tokens):  # mostly not words: noise from a weak model
        return None
    if "boxed" not in text.lower():  # the meta-prompt requires it; off-topic text from weak models lacks it
        return None
    return text


def propose_instructions(
    llm: Any,
    scored: Sequence[CandidateResult],
    *,
    n: int,
    known: set[str],
    seed: int,
    top_k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 320,
    max_calls: int | None = None,
    on_event: Event = no_events,
) -> tuple[list[str], int]:
    """Up to ``n`` new instructions (deduplicated against ``known``, normalised) and the LLM calls made.

    LLM failures and unusable replies are skipped; at most ``max_calls`` (default ``3 n``) calls.
    """
    messages = meta_prompt(scored, top_k=top_k)
    seen = set(known)
    out: list[str] = []
    calls = 0
    limit = max_calls if max_calls is not None else 3 * n
    rng = random.Random(seed)
    while len(out) < n and calls < limit:
        calls += 1
        try:
            reply = llm.chat(
                messages, max_new_tokens=max_new_tokens, temperature=temperature, seed=rng.randrange(2**31)
            )
        except Exception as exc:  # a flaky endpoint: try again within the call budget
            on_event("propose_error", {"error": f"{type(exc).__name__}: {str(exc)[:120]}"})
            continue
        text = parse_proposal(reply)
        on_event(
            "propose", {"calls": calls, "accepted": text is not None and norm_instruction(text) not in seen}
        )
        if text is None or norm_instruction(text) in seen:
            continue
        seen.add(norm_instruction(text))
        out.append(text)
    return out, calls
