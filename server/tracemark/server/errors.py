"""Map domain errors to precise gRPC status codes by type, never leaking tracebacks.

Every error tracemark raises on purpose subclasses one of the kinds in :mod:`tracemark.foundation.errors`;
the kind alone decides the status code (``_STATUS_BY_KIND``). A :class:`RequestError` carries an explicit
code. Anything else is a bug: the caller gets INTERNAL with a fixed message and the server log gets the
traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import wraps

import grpc
from tracemark.foundation.errors import (
    DeadlineExceeded,
    Failed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TracemarkError,
    Unavailable,
    first_line,
)

log = logging.getLogger(__name__)

_STATUS_BY_KIND: tuple[tuple[type[TracemarkError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Failed, grpc.StatusCode.INTERNAL),
)


class RequestError(Exception):
    """An error with a chosen gRPC status and a message safe to return to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status and caller-safe message for ``exc``."""
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, TracemarkError):
        for kind, code in _STATUS_BY_KIND:
            if isinstance(exc, kind):
                return code, first_line(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while work was in progress"
    return grpc.StatusCode.INTERNAL, "internal error (see server log)"


def _abort(context: grpc.ServicerContext, exc: Exception, where: str) -> None:
    """End the RPC with ``exc``'s status; failures on our side are logged here, never sent to the caller."""
    code, message = status_for(exc)
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
