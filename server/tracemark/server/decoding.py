"""Bounded decoding of what callers send: request messages, JSON options and pipeline names.

Python's ``json`` recurses per nesting level (about 1,000 levels raise ``RecursionError``) and converts
integers of any length (4,300+ digits raise ``ValueError``); both used to surface as INTERNAL. Here every
caller-supplied JSON document is bounded in size before parsing and in depth after, and every failure is
an :class:`~tracemark.foundation.errors.InvalidInput` (INVALID_ARGUMENT) whose message echoes nothing
long.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

import grpc
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

MAX_JSON_CHARS = 32_768  # one rewriter's options (the longest option, an LLM instruction, is 8,000)
MAX_JSON_DEPTH = 32
MAX_PIPELINE_STEPS = 16
MAX_OPTION_ENTRIES = 16
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # tracemark.plugins.loader.NAME_PATTERN


class RequestDecodeError(InvalidInput):
    """A caller's field could not be decoded within the limits."""


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0, ``[]`` is 1); iterative, any depth."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in item)
    return deepest


def load_json(
    raw: str, *, what: str, max_chars: int = MAX_JSON_CHARS, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse ``raw`` (a caller's JSON) or raise :class:`RequestDecodeError`."""
    if len(raw) > max_chars:
        raise RequestDecodeError(f"{what} is {len(raw)} characters; the limit is {max_chars}")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise RequestDecodeError(f"{what} is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise RequestDecodeError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError:  # e.g. an integer of more than 4,300 digits
        raise RequestDecodeError(f"{what} holds a value JSON decoding refuses (e.g. a huge number)") from None
    if json_depth(value) > max_depth:
        raise RequestDecodeError(f"{what} is nested deeper than {max_depth} levels")
    return value


def load_json_object(raw: str, *, what: str) -> dict[str, Any]:
    """Like :func:`load_json`, for a document that must be a JSON object (empty text means ``{}``)."""
    value = load_json(raw, what=what) if raw else {}
    if not isinstance(value, dict):
        raise RequestDecodeError(f"{what} must be a JSON object")
    return value


def pipeline_names(names: Iterable[str]) -> list[str]:
    """The caller's rewriter names, stripped, bounded in number and shape."""
    cleaned = [n.strip() for n in names if n.strip()]
    if len(cleaned) > MAX_PIPELINE_STEPS:
        raise RequestDecodeError(f"the pipeline has {len(cleaned)} steps; the limit is {MAX_PIPELINE_STEPS}")
    for name in cleaned:
        if not _NAME.fullmatch(name):
            raise RequestDecodeError(f"{shown(name)} is not a rewriter name")
    return cleaned


# -- undecodable request messages -----------------------------------------------------------------------
class _Undecodable:
    """Stands in for a request whose bytes did not decode (the handler never sees it)."""

    __slots__ = ()


UNDECODABLE = _Undecodable()
UNDECODABLE_MESSAGE = "the request message could not be decoded"


class DecodeGuardInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: a request whose bytes do not decode ends with INVALID_ARGUMENT.

    gRPC Python answers a deserializer exception with INTERNAL and logs an ERROR line per request, before
    any interceptor's behaviour runs, so even a caller without a token could fill the log. Here each
    handler's deserializer is wrapped: a decode failure yields a marker, the wrapped behaviour aborts
    with INVALID_ARGUMENT, and the failure is logged at most once a minute. Decoding itself is bounded
    by ``max_message_bytes`` and linear.
    """

    def __init__(self, *, log_every_s: float = 60.0) -> None:
        self.log = RateLimitedLog(log, per_window=1, window_s=log_every_s)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = handler_call_details.method

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as exc:
                kind = type(exc).__name__
                self.log.warning("undecodable %s request (%d bytes, %s)", method[:80], len(data), kind)
                return UNDECODABLE

        return _guarded(handler, safe_decode)


def _refuse(context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)


def _guarded(handler: grpc.RpcMethodHandler, safe_decode) -> grpc.RpcMethodHandler:
    def unary(behavior):
        def run(request, context):
            if request is UNDECODABLE:
                _refuse(context)
            return behavior(request, context)

        return run

    def unary_stream(behavior):
        def run(request, context):
            if request is UNDECODABLE:
                _refuse(context)
            yield from behavior(request, context)

        return run

    def checked(requests, context):
        for request in requests:
            if request is UNDECODABLE:
                _refuse(context)
            yield request

    def stream(behavior):
        return lambda requests, context: behavior(checked(requests, context), context)

    changes: dict[str, Any] = {"request_deserializer": safe_decode}
    if handler.unary_unary:
        changes["unary_unary"] = unary(handler.unary_unary)
    elif handler.unary_stream:
        changes["unary_stream"] = unary_stream(handler.unary_stream)
    elif handler.stream_unary:
        changes["stream_unary"] = stream(handler.stream_unary)
    elif handler.stream_stream:
        changes["stream_stream"] = stream(handler.stream_stream)
    return handler._replace(**changes)
