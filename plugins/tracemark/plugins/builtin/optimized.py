"""``optimized``: an LLM rewrites the trace as a dense formal derivation with no conversational text and
the final answer in ``\\boxed{}`` (the paper's main anti-distillation method; the instruction text is
tracemark's own).

Which instruction is used, in order: the request's ``instruction`` option; else the instruction installed
by ``tracemark optimize install`` (the file :func:`installed_instruction_path` names); else the built-in
:data:`OPTIMIZED_INSTRUCTION`. A missing installed file is normal; an unreadable or malformed one logs a
warning (once per file version) and the built-in is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from tracemark.foundation.paths import user_data_path
from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.builtin.llm_base import LLMRewriter

log = logging.getLogger(__name__)

OPTIMIZED_INSTRUCTION = (
    "Rewrite the given solution as a terse formal derivation in dense technical mathematical language. "
    "Name every quantity with a symbol, state each step as an equation or an implication (use =, ⇒, ∴), "
    "and compress several steps into one line where possible. Remove all conversational, narrative and "
    "explanatory text: no greetings, no 'we', no 'let us', no commentary. Keep every intermediate result and "
    "every number exactly as in the original, without <<...>> calculator annotations. The last line must be "
    "the final answer written as \\boxed{ANSWER}. Reply with the derivation only."
)

INSTRUCTION_ENV = "TRACEMARK_OPTIMIZED_INSTRUCTION"
INSTRUCTION_FILE = "optimized-instruction.json"
MAX_INSTRUCTION_CHARS = 8000
_warned: set[tuple[str, str]] = set()


def installed_instruction_path() -> Path:
    """Where ``tracemark optimize install`` writes the instruction: ``$TRACEMARK_OPTIMIZED_INSTRUCTION``,
    else ``optimized-instruction.json`` in the tracemark data folder (``$TRACEMARK_HOME``, else
    ``$XDG_DATA_HOME/tracemark``, i.e. ``~/.local/share/tracemark``)."""
    explicit = os.environ.get(INSTRUCTION_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    return user_data_path() / INSTRUCTION_FILE


def read_installed_instruction(path: Path | None = None) -> str | None:
    """The installed instruction, or ``None`` when there is none (missing file) or it is unusable.

    The file is JSON with an ``instruction`` string (what ``tracemark optimize install`` writes); a file
    that does not start with ``{`` is taken as the plain instruction text.
    """
    path = path or installed_instruction_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        _warn_once(path, f"cannot read it ({type(exc).__name__})")
        return None
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text).get("instruction")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if not isinstance(value, str):
            _warn_once(path, "it is not JSON with an 'instruction' string")
            return None
        text = value
    text = text.strip()
    if not text or len(text) > MAX_INSTRUCTION_CHARS:
        _warn_once(path, f"the instruction is empty or longer than {MAX_INSTRUCTION_CHARS} characters")
        return None
    return text


def _warn_once(path: Path, problem: str) -> None:
    try:
        stamp = str(path.stat().st_mtime_ns)
    except OSError:
        stamp = ""
    if (str(path), stamp) in _warned:
        return
    _warned.add((str(path), stamp))
    log.warning("optimized: ignoring the installed instruction %s: %s; using the built-in one", path, problem)


def active_instruction() -> tuple[str, str]:
    """(instruction, source) used when a request gives none: source is ``installed:<path>`` or
    ``built-in``."""
    installed = read_installed_instruction()
    if installed is not None:
        return installed, f"installed:{installed_instruction_path()}"
    return OPTIMIZED_INSTRUCTION, "built-in"


class OptimizedRewriter(LLMRewriter):
    name = "optimized"
    description = (
        "LLM rewrite into a dense formal derivation (no conversational text, every equation result kept, "
        "final answer in \\boxed{}); uses the instruction installed by `tracemark optimize install` when "
        "present (see `tracemark optimize show`)."
    )
    instruction = OPTIMIZED_INSTRUCTION

    def build_messages(self, trace: str, context: RewriteContext) -> list[dict[str, str]]:
        messages = super().build_messages(trace, context)
        if not getattr(self.options, "instruction", None):
            text, source = active_instruction()
            messages[0] = {"role": "system", "content": text}
            if source != "built-in":
                digest = hashlib.sha256(text.encode()).hexdigest()[:12]
                context.note(f"installed instruction {digest}")
        return messages

    def closing_line(self, trace: str) -> str | None:
        answer = extract_final_answer(trace)
        return f"\\boxed{{{answer}}}" if answer is not None else None
