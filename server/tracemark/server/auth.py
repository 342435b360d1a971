"""Bearer-token authentication: each token maps to one API account.

The tokens file is TOML and stores only SHA-256 hashes of tokens::

    [accounts.alice]
    token_sha256 = "9f86d08..."

The interceptor resolves the caller's account once per RPC and makes it available to handlers through
:func:`current_account`; no request field can choose the account.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.files import read_toml

log = logging.getLogger(__name__)

_ACCOUNT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tracemark_account", default=None)
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenStoreError(InvalidInput):
    """The tokens file is unreadable or malformed."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (shown once to the operator, stored only as a hash)."""
    return "tm_" + secrets.token_urlsafe(32)


class TokenStore:
    """Maps token hashes to account names."""

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        # account -> sha256 hex
        self._by_hash: dict[str, str] = {}
        for account, digest in (accounts or {}).items():
            self._add(account, digest)

    def _add(self, account: str, digest: str) -> None:
        if not ACCOUNT_NAME.match(account):
            raise TokenStoreError(f"invalid account name {account!r} (letters, digits, . _ -; max 64)")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise TokenStoreError(f"account {account!r}: token_sha256 must be 64 lowercase hex characters")
        self._by_hash[digest] = account

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        data = read_toml(path, what="tokens file", error=TokenStoreError)
        accounts = {}
        for name, entry in (data.get("accounts") or {}).items():
            if not isinstance(entry, dict) or "token_sha256" not in entry:
                raise TokenStoreError(f"account {name!r} in {path} has no token_sha256")
            accounts[name] = str(entry["token_sha256"])
        return cls(accounts)

    @property
    def accounts(self) -> list[str]:
        return sorted(set(self._by_hash.values()))

    def account_for(self, token: str) -> str | None:
        digest = hash_token(token)
        for known, account in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return account
        return None


def add_account(path: Path, account: str) -> str:
    """Create a token for ``account`` in the tokens file (mode 0600); return the token (show it once)."""
    store = TokenStore.load(path) if Path(path).exists() else TokenStore()
    if account in store.accounts:
        raise TokenStoreError(f"account {account!r} already has a token in {path}")
    token = new_token()
    store._add(account, hash_token(token))
    lines = ["# tracemark API accounts: sha256 of each bearer token (the tokens themselves are not stored)"]
    for digest, name in sorted(store._by_hash.items(), key=lambda kv: kv[1]):
        lines += ["", f"[accounts.{name}]", f'token_sha256 = "{digest}"']
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return token


def current_account() -> str | None:
    """The authenticated account of the RPC being handled (None for anonymous callers)."""
    return _ACCOUNT.get()


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


def _same_kind(handler: grpc.RpcMethodHandler, unary: Callable, stream: Callable) -> grpc.RpcMethodHandler:
    """A handler of the same RPC kind whose behaviour is ``unary(b)`` / ``stream(b)`` of the original."""
    options = dict(
        request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **options)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **options)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **options)


def _with_account(handler: grpc.RpcMethodHandler, account: str | None) -> grpc.RpcMethodHandler:
    def unary(behavior: Callable) -> Callable:
        def run(request, context):
            reset = _ACCOUNT.set(account)
            try:
                return behavior(request, context)
            finally:
                _ACCOUNT.reset(reset)

        return run

    def stream(behavior: Callable) -> Callable:
        # A streaming behaviour is a generator: the account must be set while it is iterated.
        def run(request, context):
            reset = _ACCOUNT.set(account)
            try:
                yield from behavior(request, context)
            finally:
                _ACCOUNT.reset(reset)

        return run

    return _same_kind(handler, unary, stream)


def _rejecting(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return _same_kind(handler, lambda _b: abort, lambda _b: abort)


class AuthInterceptor(grpc.ServerInterceptor):
    """Resolves ``authorization: Bearer <token>`` to an account; rejects unknown or missing tokens."""

    def __init__(self, store: TokenStore, *, allow_anonymous: bool = False) -> None:
        self.store = store
        self.allow_anonymous = allow_anonymous

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            if self.allow_anonymous:
                return _with_account(handler, None)
            return _rejecting(handler, "missing bearer token (metadata 'authorization: Bearer <token>')")
        account = self.store.account_for(token) if token else None
        if account is None:
            log.info("rejected call to %s: unknown token", handler_call_details.method)
            return _rejecting(handler, "unknown bearer token")
        return _with_account(handler, account)
