"""Error kinds shared by every layer.

A domain error subclasses one of these kinds; the kind says what went wrong from the caller's point of
view, and the gRPC runtime maps each kind to one status code by type (``tracemark.server.errors``). The
message of a kind-derived error must be safe to show to the caller: no secret, no traceback.
"""

from __future__ import annotations


class TracemarkError(Exception):
    """Base of every error tracemark raises on purpose."""


class InvalidInput(TracemarkError, ValueError):
    """The caller sent something unusable (INVALID_ARGUMENT; CLI exit 2)."""


class NotFound(TracemarkError, LookupError):
    """A named thing (rewriter, report, account) does not exist (NOT_FOUND)."""


class PermissionDenied(TracemarkError):
    """The caller may not do this (PERMISSION_DENIED)."""


class ResourceExhausted(TracemarkError):
    """A queue, budget or size limit was reached (RESOURCE_EXHAUSTED)."""


class Unavailable(TracemarkError):
    """A dependency (model, endpoint, suspect) cannot be reached right now (UNAVAILABLE)."""


class DeadlineExceeded(TracemarkError, TimeoutError):
    """Work did not finish in its time budget (DEADLINE_EXCEEDED)."""


class Failed(TracemarkError, RuntimeError):
    """Our side failed while doing what the caller asked (INTERNAL, with a caller-safe message)."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
