"""Log entries and their hashes: what a third party recomputes to check the transparency log.

An entry has a position ``seq`` (1, 2, 3, ...), a ``kind`` (``account-key``, ...), an optional ``subject``
(unique in the log), a JSON object ``body`` and a time ``logged_at`` (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``).
Hashes are SHA-256, written as 64 lowercase hex digits; ``canonical_json`` is the canonical JSON of
:mod:`tracemark.forensics.reports.canonical` (RFC 8785 style: sorted keys, no whitespace, UTF-8)::

    leaf_hash  = SHA-256( b"tracemark-log-leaf/1\\x00"
                          || canonical_json({"seq": seq, "kind": kind, "subject": subject,
                                             "logged_at": logged_at, "body": body}) )
    entry_hash = SHA-256( b"tracemark-log/1\\x00" || bytes.fromhex(prev_hash) || bytes.fromhex(leaf_hash) )

``prev_hash`` of entry 1 is :data:`GENESIS` (64 zeros); of entry n > 1 it is ``entry_hash`` of entry n-1.
The ``entry_hash`` of the last entry is the log's *head*; a signed checkpoint names a size and its head.

The entry's fields enter the chain through their leaf hash, so an inclusion proof can show a few entries
in full and only the leaf hashes of the others: the verifier still recomputes every link up to the signed
head, and learns nothing about the other entries' contents.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tracemark.forensics.reports.canonical import CanonicalJSONError, canonical_json
from tracemark.foundation.errors import InvalidInput, NotFound, Unavailable

GENESIS = "0" * 64
"""``prev_hash`` of the first entry, and the head of an empty log."""
LEAF_DOMAIN = b"tracemark-log-leaf/1\x00"
CHAIN_DOMAIN = b"tracemark-log/1\x00"
MAX_KIND = 64
MAX_SUBJECT = 300
MAX_BODY_BYTES = 64 * 1024
KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
ENTRY_FIELDS = ("seq", "kind", "subject", "body", "prev_hash", "entry_hash", "logged_at")


class LogError(InvalidInput):
    """A log operation was asked something unusable (bad entry, empty log, malformed proof)."""


class LogConflict(LogError):
    """The subject is already in the log with another kind or body (an entry is never replaced)."""


class LogEntryNotFound(NotFound):
    """No log entry at that position or with that subject."""


class LogBusy(Unavailable):
    """The log head kept changing under concurrent appenders; try again."""


def is_hash(value: Any) -> bool:
    """True for 64 lowercase hex digits."""
    return isinstance(value, str) and bool(_HEX64.match(value))


def format_time(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`."""
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        raise LogError(f"not a log time (YYYY-MM-DDTHH:MM:SS.ffffffZ): {text!r}") from None


def leaf_hash(seq: int, kind: str, subject: str | None, logged_at: str, body: Mapping[str, Any]) -> str:
    """SHA-256 of the domain label and the canonical JSON of an entry's fields (module doc)."""
    fields = {"seq": seq, "kind": kind, "subject": subject, "logged_at": logged_at, "body": body}
    return hashlib.sha256(LEAF_DOMAIN + canonical_json(fields)).hexdigest()


def chain_hash(prev_hash: str, leaf: str) -> str:
    """SHA-256 of the chain label, the previous entry hash and a leaf hash (module doc)."""
    if not is_hash(prev_hash) or not is_hash(leaf):
        raise LogError("chain hashes must be 64 lowercase hex digits")
    return hashlib.sha256(CHAIN_DOMAIN + bytes.fromhex(prev_hash) + bytes.fromhex(leaf)).hexdigest()


def entry_hash(
    prev_hash: str, seq: int, kind: str, subject: str | None, logged_at: str, body: Mapping[str, Any]
) -> str:
    """The hash of an entry linked to ``prev_hash``: ``chain_hash(prev_hash, leaf_hash(...))``."""
    return chain_hash(prev_hash, leaf_hash(seq, kind, subject, logged_at, body))


def check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind) or len(kind) > MAX_KIND:
        raise LogError(
            f"log entry kind must be 1-{MAX_KIND} characters of a-z 0-9 . _ - (starting with a letter or "
            f"digit), got {kind!r}"[:200]
        )
    return kind


def check_subject(subject: Any) -> str | None:
    if subject is None:
        return None
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT:
        raise LogError(f"log entry subject must be None or a string of 1-{MAX_SUBJECT} characters")
    if any(ord(c) < 0x20 for c in subject):
        raise LogError("log entry subject must not contain control characters")
    return subject


def canonical_body(body: Any) -> bytes:
    """The canonical JSON of an entry body (a JSON object of plain JSON values, at most 64 KiB)."""
    if not isinstance(body, Mapping):
        raise LogError(f"log entry body must be a JSON object (dict), got {type(body).__name__}")
    try:
        data = canonical_json(body)
    except CanonicalJSONError as exc:
        raise LogError(f"log entry body is not plain JSON: {exc}") from None
    if len(data) > MAX_BODY_BYTES:
        raise LogError(
            f"log entry body is {len(data)} bytes of canonical JSON; the limit is {MAX_BODY_BYTES}"
        )
    return data


@dataclass(frozen=True)
class LogEntryView:
    """One log entry as read from the ledger (``logged_at``: :func:`format_time` form)."""

    seq: int
    kind: str
    subject: str | None
    body: dict
    prev_hash: str
    entry_hash: str
    logged_at: str

    def as_dict(self) -> dict:
        """The public wire form (what exports, proofs and receipts hold)."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "subject": self.subject,
            "body": copy.deepcopy(self.body),
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
            "logged_at": self.logged_at,
        }

    @property
    def leaf_hash(self) -> str:
        return leaf_hash(self.seq, self.kind, self.subject, self.logged_at, self.body)

    @classmethod
    def from_dict(cls, data: Any) -> LogEntryView:
        """Parse the wire form, checking field types (not hashes); :class:`LogError` when malformed."""
        if not isinstance(data, Mapping):
            raise LogError("a log entry must be a JSON object")
        missing = [f for f in ENTRY_FIELDS if f not in data]
        if missing:
            raise LogError(f"log entry has no {', '.join(missing)} field(s)")
        seq = data["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise LogError(f"log entry seq must be a positive integer, got {seq!r}"[:120])
        for name in ("prev_hash", "entry_hash"):
            if not is_hash(data[name]):
                raise LogError(f"log entry #{seq}: {name} is not 64 lowercase hex digits")
        logged_at = data["logged_at"]
        parse_time(logged_at)
        body = data["body"]
        canonical_body(body)
        return cls(
            seq=seq,
            kind=check_kind(data["kind"]),
            subject=check_subject(data["subject"]),
            body=dict(body),
            prev_hash=data["prev_hash"],
            entry_hash=data["entry_hash"],
            logged_at=logged_at,
        )


def body_from_json(text: str) -> dict:
    """The body stored as canonical JSON text."""
    return json.loads(text)
