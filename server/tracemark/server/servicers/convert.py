"""Conversions between pipeline results and tracemark.v1 messages."""

from __future__ import annotations

from tracemark.v1 import common_pb2

_GUARD = {
    "preserved": common_pb2.GUARD_OUTCOME_PRESERVED,
    "preserved_after_retry": common_pb2.GUARD_OUTCOME_PRESERVED_AFTER_RETRY,
    "fell_back": common_pb2.GUARD_OUTCOME_FELL_BACK,
    "error": common_pb2.GUARD_OUTCOME_FELL_BACK,
    "timeout": common_pb2.GUARD_OUTCOME_FELL_BACK,
    "skipped": common_pb2.GUARD_OUTCOME_FELL_BACK,
    "no_answer": common_pb2.GUARD_OUTCOME_NO_ANSWER,
}


def rewriter_runs(result) -> list[common_pb2.RewriterRun]:
    return [
        common_pb2.RewriterRun(
            name=step.name,
            version=step.version or "",
            guard=_GUARD.get(step.guard, common_pb2.GUARD_OUTCOME_UNSPECIFIED),
            attempts=step.attempts,
            seconds=step.seconds,
            detail=step.detail or "",
        )
        for step in result.steps
    ]


def text_chunks(text: str, size: int = 256) -> list[str]:
    """Split text into pieces of about ``size`` characters, at line ends where possible."""
    chunks, current = [], ""
    for line in text.splitlines(keepends=True):
        if current and len(current) + len(line) > size:
            chunks.append(current)
            current = ""
        current += line
        while len(current) > size:
            chunks.append(current[:size])
            current = current[size:]
    if current:
        chunks.append(current)
    return chunks
