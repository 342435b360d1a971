"""Map domain errors to precise gRPC status codes, never leaking tracebacks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import wraps

import grpc

log = logging.getLogger(__name__)


class RequestError(Exception):
    """An error with a chosen gRPC status and a message safe to return to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """Status and caller-safe message for ``exc`` (domain classes are matched by name to keep
    server code free of hard imports of optional subsystems)."""
    from tracemark.server.batching import QueueClosed, QueueFull
    from tracemark.server.teacher.base import TeacherError

    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, QueueClosed):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while work was in progress"
    if isinstance(exc, TeacherError):
        return grpc.StatusCode.INTERNAL, f"teacher failed: {exc}"
    names = {cls.__name__ for cls in type(exc).__mro__}
    by_name = {
        "UnknownRewriterError": grpc.StatusCode.NOT_FOUND,
        "ReportNotFound": grpc.StatusCode.NOT_FOUND,
        "InvalidRewriterOptions": grpc.StatusCode.INVALID_ARGUMENT,
        "SuspectSpecError": grpc.StatusCode.INVALID_ARGUMENT,
        "InvestigationError": grpc.StatusCode.INVALID_ARGUMENT,
        "CalibrationError": grpc.StatusCode.INVALID_ARGUMENT,
        "SuspectUnavailable": grpc.StatusCode.UNAVAILABLE,
        "RewriterTimeout": grpc.StatusCode.DEADLINE_EXCEEDED,
        "RewriterFailed": grpc.StatusCode.INTERNAL,
        "BudgetExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    for name, code in by_name.items():
        if name in names:
            return code, str(exc).splitlines()[0] if str(exc) else name
    return grpc.StatusCode.INTERNAL, "internal error (see server log)"


def _abort(context: grpc.ServicerContext, exc: Exception, where: str) -> None:
    """End the RPC with ``exc``'s status; unexpected errors are logged here, never sent to the caller."""
    code, message = _status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", where)
    context.abort(code, message)


def grpc_errors(method: Callable) -> Callable:
    """Decorate a unary servicer method: domain errors become status codes, others INTERNAL."""

    @wraps(method)
    def run(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # the one place exceptions turn into statuses
            _abort(context, exc, method.__name__)

    return run


def grpc_stream_errors(method: Callable) -> Callable:
    """Like :func:`grpc_errors` for server-streaming methods."""

    @wraps(method)
    def run(self, request, context) -> Iterator:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            _abort(context, exc, method.__name__)

    return run
