"""Commitments to the distributional channel's keys (:mod:`tracemark.foundation.channel`) in the log.

* An **account's channel key** is committed inside its ``account-key`` entry (same subject, logged before
  the account's first trace under that key version, :mod:`~tracemark.forensics.tlog.accounts`) when the
  scheme carries a channel: the body gains ``"channel_commitment"``.
* The **provider key** (one per master version; it marks every trace) gets its own entry of kind
  ``provider-key``, subject ``provider-key:<v>``, logged before the first trace decoded under it::

      {"key_version": v, "key_fingerprint": ..., "channel": {...spec...}, "commitment": <hex>}

Both commitments are::

    SHA-256( b"tracemark/v1/channel-key-commitment\\x00" || scope || b"\\x00" || utf8(account or "")
             || b"\\x00" || ascii(decimal v) || b"\\x00" || canonical_json(spec) || b"\\x00" || key )

so a disclosed key opens exactly one commitment, under the logged spec. The keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine
from tracemark.forensics.reports.canonical import CanonicalJSONError, canonical_json
from tracemark.forensics.tlog.entries import LogEntryView, LogError
from tracemark.forensics.tlog.store import append_entry, find_entries

PROVIDER_KEY_KIND = "provider-key"
CHANNEL_LABEL = b"tracemark/v1/channel-key-commitment\x00"
CHANNEL_KEY_BYTES = 32


def provider_subject(key_version: int) -> str:
    """``provider-key:<version>``."""
    return f"{PROVIDER_KEY_KIND}:{key_version}"


def channel_key_commitment(*, scope: str, account: str, key_version: int, key: bytes, spec: Mapping) -> str:
    """The hex commitment to a channel key (module doc); ``scope`` is ``provider`` or ``account``."""
    if scope not in ("provider", "account"):
        raise LogError(f"channel key scope must be provider or account, got {scope!r}"[:120])
    if (scope == "account") != bool(account):
        raise LogError("an account channel key names its account; the provider key names none")
    if not isinstance(key_version, int) or isinstance(key_version, bool) or key_version < 1:
        raise LogError(f"key_version must be a positive integer, got {key_version!r}"[:120])
    if not isinstance(key, bytes) or len(key) != CHANNEL_KEY_BYTES:
        raise LogError(f"a channel key must be {CHANNEL_KEY_BYTES} bytes")
    if not isinstance(spec, Mapping):
        raise LogError("the channel spec must be a JSON object (dict)")
    try:
        spec_bytes = canonical_json(dict(spec))
    except CanonicalJSONError as exc:
        raise LogError(f"channel spec is not plain JSON: {exc}") from None
    data = b"\x00".join(
        [scope.encode(), account.encode("utf-8"), str(key_version).encode("ascii"), spec_bytes, key]
    )
    return hashlib.sha256(CHANNEL_LABEL + data).hexdigest()


def open_channel_commitment(entry_body: Mapping[str, Any], key: bytes, *, scope: str) -> bool:
    """True when ``key`` opens the channel commitment of an ``account-key`` (``scope="account"``) or
    ``provider-key`` (``scope="provider"``) entry body; False when it does not or the body has none."""
    if not isinstance(entry_body, Mapping) or not isinstance(key, bytes) or len(key) != CHANNEL_KEY_BYTES:
        return False
    if scope == "account":
        scheme = entry_body.get("scheme")
        spec = scheme.get("channel") if isinstance(scheme, Mapping) else None
        committed, account = entry_body.get("channel_commitment"), entry_body.get("account")
    else:
        spec, committed, account = entry_body.get("channel"), entry_body.get("commitment"), ""
    if not isinstance(spec, Mapping) or not isinstance(committed, str) or not isinstance(account, str):
        return False
    try:
        expected = channel_key_commitment(
            scope=scope, account=account, key_version=entry_body.get("key_version"), key=key, spec=spec
        )
    except LogError:
        return False
    return hmac.compare_digest(expected, committed)


def ensure_provider_commitment(
    engine: Engine, *, master: Any, key_version: int, spec: Mapping
) -> LogEntryView:
    """Log the commitment to the provider channel key of ``key_version`` under ``spec`` (idempotent; a
    different spec for a logged version raises ``LogConflict``: a spec changes only with a key rotation)."""
    key = master.channel_key(None, version=key_version)
    body = {
        "key_version": key_version,
        "key_fingerprint": master.fingerprint(key_version),
        "channel": dict(spec),
        "commitment": channel_key_commitment(
            scope="provider", account="", key_version=key_version, key=key.secret, spec=spec
        ),
    }
    return append_entry(engine, kind=PROVIDER_KEY_KIND, subject=provider_subject(key_version), body=body)


def provider_entries(engine: Engine) -> dict[int, LogEntryView]:
    """Every ``provider-key`` entry by key version."""
    out = {}
    for e in find_entries(engine, kind=PROVIDER_KEY_KIND):
        version = e.body.get("key_version")
        if isinstance(version, int) and e.subject == provider_subject(version):
            out[version] = e
    return out
