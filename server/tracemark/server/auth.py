"""Bearer-token authentication and roles: each token maps to one API account with one role.

The tokens file is TOML and stores only SHA-256 hashes of tokens, and each account's role::

    [accounts.alice]
    token_sha256 = "9f86d08..."
    role = "customer"          # customer | compliance | admin; missing means customer

Roles are least privilege, decided by the RPC's service before any handler work
(:data:`SERVICE_ROLES`): ``customer`` calls TeacherService and RewriteService, ``compliance`` calls
ForensicsService (investigations, reports), ``admin`` is reserved for administrative RPCs (none are served
today: accounts and keys are managed with the CLI on the server host). AccountService (the caller's own
key receipt) is open to every role (:data:`ANY_ROLE`) but needs a token, even with anonymous callers
allowed. Anonymous callers (``[auth] allow_anonymous``) are customers. A wrong role gets
``PERMISSION_DENIED`` naming the role required.

The interceptor resolves the caller's account once per RPC and makes it available to handlers through
:func:`current_account` and :func:`current_role`; no request field can choose either.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.files import read_toml
from tracemark.foundation.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

_ACCOUNT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tracemark_account", default=None)
_ROLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("tracemark_role", default=None)
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

CUSTOMER, COMPLIANCE, ADMIN = "customer", "compliance", "admin"
ROLES = (CUSTOMER, COMPLIANCE, ADMIN)
ANY_ROLE = "any"  # a service every authenticated account may call (about its own account only)
#: The role each service requires. A method of a service not listed here is refused for every role.
SERVICE_ROLES: dict[str, str] = {
    "tracemark.v1.TeacherService": CUSTOMER,
    "tracemark.v1.RewriteService": CUSTOMER,
    "tracemark.v1.ForensicsService": COMPLIANCE,
    "tracemark.v1.AccountService": ANY_ROLE,
}


# At most 5 rejection lines a second: a flood of bad calls cannot flood the log.
_rejections = RateLimitedLog(log, per_window=5, window_s=1.0)


class TokenStoreError(InvalidInput):
    """The tokens file is unreadable or malformed."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (shown once to the operator, stored only as a hash)."""
    return "tm_" + secrets.token_urlsafe(32)


def required_role(method: str) -> str | None:
    """The role ``method`` (``/package.Service/Method``) requires (:data:`ANY_ROLE`: any authenticated
    account); None when no role may call it."""
    service = method.lstrip("/").partition("/")[0]
    return SERVICE_ROLES.get(service)


def _check_role(account: str, role: object) -> str:
    if role not in ROLES:
        raise TokenStoreError(f"account {account!r}: role must be one of {', '.join(ROLES)}")
    return str(role)


class TokenStore:
    """Maps token hashes to accounts, and accounts to roles.

    ``accounts`` maps each account to its token's sha256 hex, or to a dict ``{"token_sha256": ...,
    "role": ...}``; ``roles`` gives roles for accounts passed as bare hashes. An account with no role is a
    ``customer`` (least privilege).
    """

    def __init__(
        self, accounts: Mapping[str, str | Mapping] | None = None, roles: Mapping[str, str] | None = None
    ) -> None:
        self._by_hash: dict[str, str] = {}  # sha256 hex -> account
        self._roles: dict[str, str] = {}  # account -> role
        roles = dict(roles or {})
        for account, entry in (accounts or {}).items():
            if isinstance(entry, Mapping):
                self._add(account, str(entry.get("token_sha256", "")), entry.get("role", CUSTOMER))
            else:
                self._add(account, entry, roles.pop(account, CUSTOMER))
        if roles:
            raise TokenStoreError(f"roles given for unknown account(s): {', '.join(sorted(roles))}")

    def _add(self, account: str, digest: str, role: object = CUSTOMER) -> None:
        if not ACCOUNT_NAME.match(account):
            raise TokenStoreError(f"invalid account name {account!r} (letters, digits, . _ -; max 64)")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise TokenStoreError(f"account {account!r}: token_sha256 must be 64 lowercase hex characters")
        self._roles[account] = _check_role(account, role)
        self._by_hash[digest] = account

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        data = read_toml(path, what="tokens file", error=TokenStoreError)
        accounts = {}
        for name, entry in (data.get("accounts") or {}).items():
            if not isinstance(entry, dict) or "token_sha256" not in entry:
                raise TokenStoreError(f"account {name!r} in {path} has no token_sha256")
            accounts[name] = {"token_sha256": str(entry["token_sha256"]), "role": entry.get("role", CUSTOMER)}
        return cls(accounts)

    @property
    def accounts(self) -> list[str]:
        return sorted(set(self._by_hash.values()))

    def accounts_with_role(self, role: str) -> list[str]:
        return [a for a in self.accounts if self._roles.get(a) == role]

    def role_of(self, account: str) -> str:
        return self._roles.get(account, CUSTOMER)

    def account_for(self, token: str) -> str | None:
        digest = hash_token(token)
        for known, account in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return account
        return None


def add_account(path: Path, account: str, role: str = CUSTOMER) -> str:
    """Create a token for ``account`` with ``role`` in the tokens file (mode 0600); return the token (show
    it once)."""
    store = TokenStore.load(path) if Path(path).exists() else TokenStore()
    if account in store.accounts:
        raise TokenStoreError(f"account {account!r} already has a token in {path}")
    token = new_token()
    store._add(account, hash_token(token), role)
    lines = ["# tracemark API accounts: sha256 of each bearer token (the tokens themselves are not stored)"]
    for digest, name in sorted(store._by_hash.items(), key=lambda kv: kv[1]):
        lines += ["", f"[accounts.{name}]", f'token_sha256 = "{digest}"', f'role = "{store.role_of(name)}"']
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return token


def current_account() -> str | None:
    """The authenticated account of the RPC being handled (None for anonymous callers)."""
    return _ACCOUNT.get()


def current_role() -> str | None:
    """The role of the RPC being handled (anonymous callers are customers; None outside an RPC)."""
    return _ROLE.get()


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


def _same_kind(
    handler: grpc.RpcMethodHandler, unary: Callable, stream: Callable, *, decode: bool = True
) -> grpc.RpcMethodHandler:
    """A handler of the same RPC kind whose behaviour is ``unary(b)`` / ``stream(b)`` of the original.
    ``decode=False`` hands the behaviour the raw request bytes (a rejection never parses the request)."""
    options = dict(
        request_deserializer=handler.request_deserializer if decode else None,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **options)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **options)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **options)


def _with_account(handler: grpc.RpcMethodHandler, account: str | None, role: str) -> grpc.RpcMethodHandler:
    def unary(behavior: Callable) -> Callable:
        def run(request, context):
            reset, reset_role = _ACCOUNT.set(account), _ROLE.set(role)
            try:
                return behavior(request, context)
            finally:
                _ROLE.reset(reset_role)
                _ACCOUNT.reset(reset)

        return run

    def stream(behavior: Callable) -> Callable:
        # A streaming behaviour is a generator: the account must be set while it is iterated.
        def run(request, context):
            reset, reset_role = _ACCOUNT.set(account), _ROLE.set(role)
            try:
                yield from behavior(request, context)
            finally:
                _ROLE.reset(reset_role)
                _ACCOUNT.reset(reset)

        return run

    return _same_kind(handler, unary, stream)


def _rejecting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(code, message)

    return _same_kind(handler, lambda _b: abort, lambda _b: abort, decode=False)


class AuthInterceptor(grpc.ServerInterceptor):
    """Resolves ``authorization: Bearer <token>`` to an account and its role; rejects unknown or missing
    tokens (``UNAUTHENTICATED``) and callers whose role may not call the method (``PERMISSION_DENIED``),
    before the request is even parsed."""

    def __init__(self, store: TokenStore, *, allow_anonymous: bool = False) -> None:
        self.store = store
        self.allow_anonymous = allow_anonymous

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            if not self.allow_anonymous:
                return _rejecting(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing bearer token (metadata 'authorization: Bearer <token>')",
                )
            account, role = None, CUSTOMER
        else:
            account = self.store.account_for(token) if token else None
            if account is None:
                _rejections.info("rejected call to %s: unknown token", method)
                return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
            role = self.store.role_of(account)
        needed = required_role(method)
        if needed == ANY_ROLE and account is None:
            return _rejecting(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "this method is about the caller's own account: it needs a bearer token",
            )
        if role != needed and needed != ANY_ROLE:
            service = method.lstrip("/").partition("/")[0].rpartition(".")[2] or "this method"
            message = (
                f"{service} requires the {needed} role" if needed else f"{service} is not served to any role"
            )
            _rejections.info("denied %s to account %s (role %s)", method, account or "<anonymous>", role)
            return _rejecting(handler, grpc.StatusCode.PERMISSION_DENIED, message)
        return _with_account(handler, account, role)
