"""Evidence reports: build, sign (DSSE/Ed25519), store hash-chained in the ledger, verify."""

from __future__ import annotations

import hashlib
import json
import platform
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import LedgerError, read_session, session_scope
from tracemark.forensics.ledger.models import Report
from tracemark.forensics.reports.canonical import CanonicalJSONError, canonical_json, to_plain
from tracemark.forensics.reports.dsse import (
    PAYLOAD_TYPE,
    EnvelopeError,
    _b64decode,
    parse_envelope,
    sign_envelope,
)
from tracemark.forensics.signatures import DERIVATION_VERSION
from tracemark.foundation.errors import InvalidInput

REPORT_FORMAT = "tracemark-report/2"  # /2: keyed commitments, no plain hashes
GENESIS_HASH = records.GENESIS_HASH
RESERVED_FIELDS = ("report_format", "report_id", "created_at", "sequence", "prev_report_hash")
VERDICTS = ("detected", "not_detected", "inconclusive")
_HEX = set("0123456789abcdef")
_ISSUE_ATTEMPTS = 5
_PG_CHAIN_LOCK = 0x746D_7263  # advisory lock key for the report chain on PostgreSQL ("tmrc")


class ReportError(InvalidInput):
    """A report cannot be built, signed or stored as asked."""


class ChainConflict(ReportError):
    """The report was built against a chain head that is no longer the head (another report came first)."""


def software_version() -> str:
    """The installed tracemark version (``importlib.metadata``), or ``0+unknown`` from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tracemark")
    except PackageNotFoundError:
        return "0+unknown"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_report_id() -> str:
    """``tmr-`` followed by 16 random hex digits."""
    return "tmr-" + secrets.token_hex(8)


def report_hash(body: bytes) -> str:
    """The chain hash of a report: SHA-256 (hex) of its canonical JSON bytes (the DSSE payload)."""
    return hashlib.sha256(body).hexdigest()


# --- build and sign ---------------------------------------------------------------------------
def build_report(
    data: Mapping[str, Any],
    *,
    prev_report_hash: str = GENESIS_HASH,
    sequence: int = 1,
    report_id: str | None = None,
    created_at: str | None = None,
) -> dict:
    """The report dict: ``data`` (the investigation's findings: suspect identity, queries or their hashes,
    seeds and commitments, statistics, decision, alpha, detector parameters) plus ``report_format``,
    ``report_id``, ``created_at``, ``sequence``, ``prev_report_hash`` and ``software``.

    Values are converted to plain JSON types (:func:`~.canonical.to_plain`); the result is canonicalisable.
    Prefer :func:`issue_report`, which takes the chain position from the ledger atomically.
    """
    if not isinstance(data, Mapping):
        raise ReportError("report data must be a mapping")
    clash = [k for k in RESERVED_FIELDS if k in data]
    if clash:
        raise ReportError(f"report data must not set reserved field(s) {', '.join(clash)}")
    if not _is_hash(prev_report_hash):
        raise ReportError("prev_report_hash must be 64 lowercase hex digits")
    if not isinstance(sequence, int) or sequence < 1:
        raise ReportError("sequence must be a positive integer")
    try:
        body = to_plain(dict(data))
    except CanonicalJSONError as exc:
        raise ReportError(f"report data: {exc}") from None
    software = body.get("software") if isinstance(body.get("software"), dict) else {}
    body["software"] = {
        **software,
        "name": "tracemark",
        "version": software_version(),
        "python": platform.python_version(),
        "signature_derivation": DERIVATION_VERSION,
    }
    body.update(
        report_format=REPORT_FORMAT,
        report_id=report_id or new_report_id(),
        created_at=created_at or _now(),
        sequence=sequence,
        prev_report_hash=prev_report_hash,
    )
    canonical_json(body)  # fail here, not when signing
    return body


def sign_report(report: Mapping[str, Any], master: Any) -> dict:
    """DSSE envelope of the canonical ``report``, signed with ``master``'s current report-signing key.

    ``master`` is a :class:`~tracemark.forensics.keys.MasterSecret` (or an ``Ed25519PrivateKey``).
    """
    key = master.signing_key() if hasattr(master, "signing_key") else master
    try:
        body = canonical_json(report)
    except CanonicalJSONError as exc:
        raise ReportError(f"report: {exc}") from None
    return sign_envelope(body, key, payload_type=PAYLOAD_TYPE)


def decode_report(envelope: Mapping | str | bytes) -> dict:
    """The report dict inside an envelope (no verification)."""
    env = parse_envelope(envelope)
    body = _b64decode(env["payload"], "payload")
    try:
        report = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EnvelopeError("the payload is not valid JSON") from None
    if not isinstance(report, dict):
        raise EnvelopeError("the payload is not a JSON object")
    return report


def _verdict_of(report: Mapping[str, Any]) -> str:
    for holder in (report, report.get("decision") if isinstance(report.get("decision"), Mapping) else {}):
        v = holder.get("verdict")
        if isinstance(v, str) and v:
            return v
    return "inconclusive"


# --- the ledger ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredReport:
    """A stored report, every shown field read from its signed envelope (never from an unsigned column).

    ``ledger_id`` is the row's key (use it to look the row up again); ``report_id``, ``seq``,
    ``created_at``, ``verdict``, ``prev_hash`` and ``investigation_id`` come from the signed payload,
    ``report_hash`` is computed from it and ``key_id`` is the envelope's signature key id. A stored column
    that disagrees with these is reported by :func:`verify_stored_report` and :func:`verify_chain`.
    ``readable`` is False when the envelope cannot be decoded (then ``verdict`` is ``unreadable``).
    """

    report_id: str
    seq: int
    created_at: str
    verdict: str
    report_hash: str
    prev_hash: str
    key_id: str
    envelope_json: str
    investigation_id: str | None = None
    ledger_id: str = ""
    readable: bool = True

    @property
    def envelope(self) -> dict:
        return json.loads(self.envelope_json)

    @property
    def report(self) -> dict:
        return decode_report(self.envelope_json)

    @classmethod
    def from_row(cls, row: Report) -> StoredReport:
        try:
            env = parse_envelope(row.envelope_json)
            body = _b64decode(env["payload"], "payload")
            report = decode_report(env)
        except EnvelopeError:
            return cls(
                report_id=row.id,
                seq=row.seq,
                created_at="",
                verdict="unreadable",
                report_hash="",
                prev_hash="",
                key_id="",
                envelope_json=row.envelope_json,
                ledger_id=row.id,
                readable=False,
            )
        seq = report.get("sequence")
        inv = report.get("investigation_id")
        return cls(
            report_id=str(report.get("report_id") or ""),
            seq=seq if isinstance(seq, int) else 0,
            created_at=str(report.get("created_at") or ""),
            verdict=_verdict_of(report),
            report_hash=report_hash(body),
            prev_hash=str(report.get("prev_report_hash") or ""),
            key_id=str(env["signatures"][0].get("keyid") or ""),
            envelope_json=row.envelope_json,
            investigation_id=inv if isinstance(inv, str) else None,
            ledger_id=row.id,
        )


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _parse_time(value: Any) -> datetime | None:
    """A signed ``created_at`` (``...Z``) or a stored column value, as an aware UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _envelope_text(envelope: Mapping | str | bytes) -> str:
    if isinstance(envelope, bytes):
        envelope = envelope.decode("utf-8")
    if isinstance(envelope, str):
        parse_envelope(envelope)
        return envelope
    return json.dumps(parse_envelope(envelope), sort_keys=True, indent=2)


def _store_in_session(session, *, envelope, investigation_id, verdict) -> Report:  # noqa: ANN001
    env = parse_envelope(envelope)
    body = _b64decode(env["payload"], "payload")
    report = decode_report(env)
    try:
        seq = int(report["sequence"])
        prev = str(report["prev_report_hash"])
        rid = str(report["report_id"])
    except (KeyError, TypeError, ValueError):
        raise ReportError(
            "the report lacks report_id, sequence or prev_report_hash (use build_report)"
        ) from None
    signed_verdict = _verdict_of(report)
    if verdict is not None and verdict != signed_verdict:
        raise ReportError(f"verdict {verdict!r} differs from the signed report's {signed_verdict!r}")
    signed_inv = report.get("investigation_id")
    signed_inv = signed_inv if isinstance(signed_inv, str) else None
    if investigation_id is not None and investigation_id != signed_inv:
        raise ReportError("investigation_id differs from the signed report's (sign it into the report)")
    key_id = str(env["signatures"][0].get("keyid") or "")
    try:
        return records.append_report(
            session,
            report_id=rid,
            seq=seq,
            prev_hash=prev,
            report_hash=report_hash(body),
            verdict=signed_verdict,
            key_id=key_id,
            envelope_json=_envelope_text(envelope),
            investigation_id=signed_inv,
            created_at=_parse_time(report.get("created_at")),
        )
    except LedgerError as exc:
        raise ChainConflict(str(exc)) from None


def store_report(
    engine: Engine,
    *,
    envelope: Mapping | str,
    investigation_id: str | None = None,
    verdict: str | None = None,
) -> str:
    """Append a signed envelope to the ledger's report chain; return its report id.

    The envelope's report must extend the current head (its ``sequence`` and ``prev_report_hash``); the
    check and the insert run in one write transaction, so concurrent writers cannot fork the chain
    (:class:`ChainConflict` if another report came first: rebuild and re-sign, or use :func:`issue_report`).
    """
    try:
        with session_scope(engine) as session:
            row = _store_in_session(
                session, envelope=envelope, investigation_id=investigation_id, verdict=verdict
            )
            return row.id
    except IntegrityError:
        raise ChainConflict("another report took this chain position; rebuild against the new head") from None


def issue_report(
    engine: Engine,
    *,
    data: Mapping[str, Any],
    master: Any,
    investigation_id: str | None = None,
    verdict: str | None = None,
) -> StoredReport:
    """Build, sign and append a report in one write transaction (the usual way to create one).

    The ledger's columns are copies of signed values: ``verdict`` (if given) must equal ``data["verdict"]``
    or ``data["decision"]["verdict"]``, and ``investigation_id`` is signed into the report (it must equal
    ``data["investigation_id"]`` when that is set).
    """
    if investigation_id is not None and isinstance(data, Mapping):
        if data.get("investigation_id", investigation_id) != investigation_id:
            raise ReportError("investigation_id differs from data['investigation_id']")
        data = {**data, "investigation_id": investigation_id}
    for attempt in range(_ISSUE_ATTEMPTS):
        try:
            with session_scope(engine) as session:  # SQLite: BEGIN IMMEDIATE serialises writers
                if engine.dialect.name == "postgresql":
                    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_CHAIN_LOCK})
                head = records.chain_head(session)
                report = build_report(
                    data,
                    prev_report_hash=GENESIS_HASH if head is None else head.report_hash,
                    sequence=1 if head is None else head.seq + 1,
                )
                envelope = sign_report(report, master)
                row = _store_in_session(
                    session,
                    envelope=envelope,
                    investigation_id=investigation_id,
                    verdict=verdict,
                )
                return StoredReport.from_row(row)
        except (IntegrityError, ChainConflict):
            if attempt == _ISSUE_ATTEMPTS - 1:
                raise ChainConflict("could not append the report: the chain head kept changing") from None
    raise AssertionError("unreachable")


def load_report(engine: Engine, report_id: str) -> StoredReport:
    """The stored report ``report_id`` (``latest`` and unique prefixes work); :class:`ReportNotFound`."""
    with read_session(engine) as session:
        return StoredReport.from_row(records.get_report(session, report_id=report_id))


def list_reports(engine: Engine) -> list[StoredReport]:
    """Every stored report in chain order."""
    with read_session(engine) as session:
        return [StoredReport.from_row(r) for r in records.list_reports(session)]
