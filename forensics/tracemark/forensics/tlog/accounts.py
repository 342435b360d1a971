"""Account key commitments in the transparency log, and the receipts customers fetch for them.

Before the first trace of an account is signed under key version ``v``, the issuer logs an entry of kind
``account-key`` with subject ``account-key:<account>:<v>`` and body::

    {"account": ..., "key_version": v, "key_fingerprint": <public fingerprint of master version v>,
     "scheme": {...how pairs are derived...}, "commitment": <hex>}

    commitment = SHA-256( b"tracemark/v1/account-key-commitment\\x00" || utf8(account) || b"\\x00"
                          || ascii(decimal v) || b"\\x00" || canonical_json(scheme) || b"\\x00"
                          || account_key )

When the scheme carries a distributional channel, the body also holds ``"channel_commitment"``, the
commitment to the account's channel key (:mod:`~tracemark.forensics.tlog.channel`).

The account key (32 bytes of HMAC-SHA256 output, full entropy) is never logged: the commitment hides it,
and disclosing the key later opens it (:func:`open_key_commitment`), proving the key that derived the
account's signatures was fixed before they were issued. A key receipt holds an account's entries and an
inclusion proof to a signed checkpoint (:mod:`~tracemark.forensics.tlog.proofs`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine
from tracemark.forensics.reports.canonical import CanonicalJSONError, canonical_json
from tracemark.forensics.tlog.channel import channel_key_commitment
from tracemark.forensics.tlog.entries import LogEntryView, LogError, is_hash
from tracemark.forensics.tlog.proofs import inclusion_proof
from tracemark.forensics.tlog.store import append_entry, find_entries
from tracemark.forensics.tlog.verify import LogVerification, verify_inclusion
from tracemark.foundation.errors import NotFound

ACCOUNT_KEY_KIND = "account-key"
COMMITMENT_LABEL = b"tracemark/v1/account-key-commitment\x00"
RECEIPT_FORMAT = "tracemark-key-receipt/1"
ACCOUNT_KEY_BYTES = 32


class KeyReceiptNotFound(NotFound):
    """The account has no key commitment in the log yet (no trace was signed for it)."""


def key_subject(account: str, key_version: int) -> str:
    """``account-key:<account>:<version>``."""
    return f"{ACCOUNT_KEY_KIND}:{account}:{key_version}"


def _check(account: Any, key_version: Any) -> None:
    if not isinstance(account, str) or not account or "\x00" in account:
        raise LogError("account must be a non-empty string without NUL characters")
    if not isinstance(key_version, int) or isinstance(key_version, bool) or key_version < 1:
        raise LogError(f"key_version must be a positive integer, got {key_version!r}"[:120])


def account_key_commitment(*, account: str, key_version: int, account_key: bytes, scheme: dict) -> str:
    """The hex commitment to ``account_key`` (module doc)."""
    _check(account, key_version)
    if not isinstance(account_key, bytes) or len(account_key) != ACCOUNT_KEY_BYTES:
        raise LogError(f"account_key must be {ACCOUNT_KEY_BYTES} bytes")
    if not isinstance(scheme, Mapping):
        raise LogError("scheme must be a JSON object (dict)")
    try:
        scheme_bytes = canonical_json(scheme)
    except CanonicalJSONError as exc:
        raise LogError(f"scheme is not plain JSON: {exc}") from None
    data = b"".join(
        [
            COMMITMENT_LABEL,
            account.encode("utf-8"),
            b"\x00",
            str(key_version).encode("ascii"),
            b"\x00",
            scheme_bytes,
            b"\x00",
            account_key,
        ]
    )
    return hashlib.sha256(data).hexdigest()


def open_key_commitment(entry_body: Mapping[str, Any], account_key: bytes) -> bool:
    """True when ``account_key`` is the key an ``account-key`` entry body commits to. A body that is not
    such an entry: :class:`LogError`."""
    if not isinstance(entry_body, Mapping) or not all(
        k in entry_body for k in ("account", "key_version", "scheme", "commitment")
    ):
        raise LogError("not an account-key entry body (account, key_version, scheme, commitment)")
    if not isinstance(account_key, bytes) or len(account_key) != ACCOUNT_KEY_BYTES:
        return False
    expected = account_key_commitment(
        account=entry_body["account"],
        key_version=entry_body["key_version"],
        account_key=account_key,
        scheme=entry_body["scheme"],
    )
    return hmac.compare_digest(expected, str(entry_body["commitment"]))


def ensure_key_commitment(
    engine: Engine, *, master: Any, account: str, key_version: int, scheme: dict
) -> LogEntryView:
    """Log the commitment to ``account``'s key of ``key_version`` (idempotent: an identical entry is
    returned as is; a different scheme for the same account and version raises ``LogConflict``)."""
    _check(account, key_version)
    key = master.account_key(account, version=key_version)
    body = {
        "account": account,
        "key_version": key_version,
        "key_fingerprint": master.fingerprint(key_version),
        "scheme": dict(scheme),
        "commitment": account_key_commitment(
            account=account, key_version=key_version, account_key=key, scheme=scheme
        ),
    }
    channel = scheme.get("channel")
    if isinstance(channel, Mapping):  # the account's channel key, committed in the same entry
        body["channel_commitment"] = channel_key_commitment(
            scope="account",
            account=account,
            key_version=key_version,
            key=master.channel_key(account, version=key_version).secret,
            spec=channel,
        )
    return append_entry(engine, kind=ACCOUNT_KEY_KIND, subject=key_subject(account, key_version), body=body)


def account_key_entries(engine: Engine, *, account: str) -> list[LogEntryView]:
    """Every ``account-key`` entry of ``account``, oldest first."""
    _check(account, 1)
    prefix = f"{ACCOUNT_KEY_KIND}:{account}:"
    return [
        e
        for e in find_entries(engine, kind=ACCOUNT_KEY_KIND, subject_prefix=prefix)
        if e.body.get("account") == account
    ]


def key_receipt(engine: Engine, *, account: str, master: Any = None) -> dict:
    """``account``'s key commitments with an inclusion proof to a signed checkpoint (a fresh checkpoint is
    signed with ``master`` when none covers them). No commitment yet: :class:`KeyReceiptNotFound`."""
    entries = account_key_entries(engine, account=account)
    if not entries:
        raise KeyReceiptNotFound(f"account {account!r} has no key commitment in the log yet")
    proof = inclusion_proof(engine, seqs=[e.seq for e in entries], master=master)
    return {"format": RECEIPT_FORMAT, "account": account, "proof": proof}


def verify_receipt(receipt: Any, public_key: Any) -> LogVerification:
    """Check a key receipt: its inclusion proof (:func:`verify_inclusion`) and that every entry in it is an
    ``account-key`` commitment of the receipt's account."""
    if not isinstance(receipt, Mapping) or receipt.get("format") != RECEIPT_FORMAT:
        return LogVerification(valid=False, problems=[f"not a key receipt (format {RECEIPT_FORMAT!r})"])
    result = verify_inclusion(receipt.get("proof"), public_key)
    account = receipt.get("account")
    entries = receipt["proof"].get("entries") if isinstance(receipt.get("proof"), Mapping) else None
    for raw in entries if isinstance(entries, list) else []:
        body = raw.get("body") if isinstance(raw, Mapping) else None
        seq = raw.get("seq") if isinstance(raw, Mapping) else "?"
        if not isinstance(body, Mapping) or raw.get("kind") != ACCOUNT_KEY_KIND:
            result.problems.append(f"entry #{seq} is not an account-key commitment")
        elif body.get("account") != account or raw.get("subject") != key_subject(
            str(account), body.get("key_version")
        ):
            result.problems.append(f"entry #{seq} commits to another account's key than {account!r}"[:200])
        elif not is_hash(body.get("commitment")):
            result.problems.append(f"entry #{seq}: the commitment is not 64 lowercase hex digits")
    if result.problems:
        result.valid, result.signed_size = False, 0
    return result
