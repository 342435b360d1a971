"""Evidence reports: build, sign (DSSE/Ed25519), store hash-chained in the ledger, verify."""

from __future__ import annotations

import hashlib
import json
import platform
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    trusted_keys,
    verify_signatures,
)
from tracemark.forensics.signatures import DERIVATION_VERSION
from tracemark.foundation.errors import InvalidInput

REPORT_FORMAT = "tracemark-report/1"
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
    """A report as the ledger holds it."""

    report_id: str
    seq: int
    created_at: str
    verdict: str
    report_hash: str
    prev_hash: str
    key_id: str
    envelope_json: str
    investigation_id: str | None = None

    @property
    def envelope(self) -> dict:
        return json.loads(self.envelope_json)

    @property
    def report(self) -> dict:
        return decode_report(self.envelope_json)

    @classmethod
    def from_row(cls, row: Report) -> StoredReport:
        try:
            created = str(decode_report(row.envelope_json).get("created_at") or "")
        except EnvelopeError:
            created = ""
        if not created and row.created_at is not None:
            created = row.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(
            report_id=row.id,
            seq=row.seq,
            created_at=created,
            verdict=row.verdict,
            report_hash=row.report_hash,
            prev_hash=row.prev_hash,
            key_id=row.key_id,
            envelope_json=row.envelope_json,
            investigation_id=row.investigation_id,
        )


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
    verdict = verdict or _verdict_of(report)
    key_id = str(env["signatures"][0].get("keyid") or "")
    try:
        return records.append_report(
            session,
            report_id=rid,
            seq=seq,
            prev_hash=prev,
            report_hash=report_hash(body),
            verdict=verdict,
            key_id=key_id,
            envelope_json=_envelope_text(envelope),
            investigation_id=investigation_id,
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

    ``verdict`` defaults to ``data["verdict"]`` or ``data["decision"]["verdict"]``.
    """
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
                    verdict=verdict or _verdict_of(report),
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


# --- verification -------------------------------------------------------------------------------
@dataclass
class VerificationResult:
    """Outcome of a verification. ``valid`` = signature valid and no chain problem.

    ``chain_checked`` says whether the ledger was consulted; when it was not (an envelope verified on its
    own), ``chain_valid`` is False and ``valid`` rests on the signature alone.
    """

    valid: bool
    signature_valid: bool
    chain_valid: bool
    problems: list[str] = field(default_factory=list)
    key_id: str | None = None
    chain_checked: bool = False
    report_id: str | None = None
    report_hash: str | None = None
    reports_checked: int = 0
    head_hash: str | None = None

    def summary(self) -> str:
        if self.valid:
            what = "signature and chain" if self.chain_checked else "signature (chain not checked)"
            return f"VALID: {what} verified with key {self.key_id}"
        return "INVALID: " + "; ".join(self.problems)


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _check_signature(
    envelope: Any, public_key: Any
) -> tuple[bool, str | None, list[str], dict | None, bytes | None]:
    """(signature ok, key id, problems, report or None, body or None)."""
    try:
        env = parse_envelope(envelope)
        body = _b64decode(env["payload"], "payload")
    except EnvelopeError as exc:
        return False, None, [str(exc)], None, None
    problems: list[str] = []
    if env["payloadType"] != PAYLOAD_TYPE:
        problems.append(f"payloadType is {env['payloadType']!r}, expected {PAYLOAD_TYPE!r}")
    try:
        keys = trusted_keys(public_key)
    except EnvelopeError as exc:
        return False, None, [str(exc)], None, body
    key_id, sig_problems = verify_signatures(env, body, keys)
    problems.extend(sig_problems)
    report = None
    try:
        report = decode_report(env)
    except EnvelopeError as exc:
        problems.append(str(exc))
    if report is not None:
        try:
            if canonical_json(report) != body:
                problems.append("the payload is not canonical JSON (it was re-serialised or edited)")
        except CanonicalJSONError as exc:
            problems.append(f"the payload cannot be canonicalised: {exc}")
        for name in RESERVED_FIELDS:
            if name not in report:
                problems.append(f"the report has no {name!r} field")
    return key_id is not None and not problems, key_id, problems, report, body


def _chain_problems(session, row: Report, report: dict | None, body: bytes | None) -> list[str]:  # noqa: ANN001
    """Problems with ``row``'s place in the chain: stored hash, signed metadata, link to the previous row."""
    problems: list[str] = []
    label = f"report {row.id} (#{row.seq})"
    if body is not None and report_hash(body) != row.report_hash:
        problems.append(f"{label}: the stored hash does not match the report content")
    if report is not None:
        for field_name, stored in (
            ("report_id", row.id),
            ("sequence", row.seq),
            ("prev_report_hash", row.prev_hash),
        ):
            if report.get(field_name) != stored:
                problems.append(f"{label}: the ledger's {field_name} differs from the signed report's")
    if row.seq == 1:
        if row.prev_hash != GENESIS_HASH:
            problems.append(f"{label}: the first report must link to the genesis hash")
        return problems
    prev = records.get_report_by_seq(session, seq=row.seq - 1)
    if prev is None:
        problems.append(
            f"{label}: the previous report #{row.seq - 1} is missing from the ledger: "
            "chain broken (deleted report?)"
        )
        return problems
    if prev.report_hash != row.prev_hash:
        problems.append(
            f"{label}: links to {row.prev_hash[:16]}..., but the previous report #{prev.seq} ({prev.id}) "
            f"has hash {prev.report_hash[:16]}...: chain broken"
        )
    try:
        prev_body = _b64decode(parse_envelope(prev.envelope_json)["payload"], "payload")
        if report_hash(prev_body) != prev.report_hash:
            problems.append(
                f"{label}: the previous report #{prev.seq} was altered "
                "(its content no longer matches its hash)"
            )
    except EnvelopeError as exc:
        problems.append(f"{label}: the previous report #{prev.seq} is unreadable: {exc}")
    return problems


def verify_envelope(
    envelope: Mapping | str | bytes, *, public_key: Any, engine: Engine | None = None
) -> VerificationResult:
    """Verify an envelope's Ed25519 signature (and, with ``engine``, its place in the ledger's chain).

    ``public_key``: an ``Ed25519PublicKey``, PEM text, a ``{key_id: key}`` mapping, a list of keys, or a
    :class:`~tracemark.forensics.keys.MasterSecret` (all its versions are trusted).
    """
    sig_ok, key_id, problems, report, body = _check_signature(envelope, public_key)
    rid = report.get("report_id") if isinstance(report, dict) else None
    h = report_hash(body) if body is not None else None
    if engine is None:
        return VerificationResult(
            valid=sig_ok,
            signature_valid=sig_ok,
            chain_valid=False,
            problems=problems,
            key_id=key_id,
            report_id=rid,
            report_hash=h,
            reports_checked=1,
        )
    chain: list[str] = []
    with read_session(engine) as session:
        row = session.get(Report, rid) if isinstance(rid, str) else None
        if row is None:
            chain.append(f"report {rid!r} is not in this ledger")
        else:
            if h != row.report_hash:
                chain.append(f"report {rid}: this envelope's content differs from the ledger's copy")
            chain.extend(_chain_problems(session, row, report, body))
    return _chained_result(sig_ok, key_id, problems, chain, report_id=rid, report_hash=h)


def verify_stored_report(engine: Engine, report_id: str, *, public_key: Any) -> VerificationResult:
    """Verify a stored report: signature, stored hash, signed chain metadata, and the link to the actual
    previous report in the ledger. :class:`ReportNotFound` for an unknown id."""
    with read_session(engine) as session:
        row = records.get_report(session, report_id=report_id)
        sig_ok, key_id, problems, report, body = _check_signature(row.envelope_json, public_key)
        chain = _chain_problems(session, row, report, body)
    return _chained_result(sig_ok, key_id, problems, chain, report_id=row.id, report_hash=row.report_hash)


def _chained_result(
    sig_ok: bool, key_id: str | None, problems: list[str], chain: list[str], **ids: Any
) -> VerificationResult:
    """The result of checking one report's signature (``problems``) and its chain links (``chain``)."""
    return VerificationResult(
        valid=sig_ok and not chain,
        signature_valid=sig_ok,
        chain_valid=not chain,
        problems=problems + chain,
        key_id=key_id,
        chain_checked=True,
        reports_checked=1,
        **ids,
    )


def verify_chain(engine: Engine, public_key: Any, *, expected_head: str | None = None) -> VerificationResult:
    """Verify every report in the ledger and every link between them.

    Removing the newest reports leaves a shorter chain that is still consistent; compare ``head_hash``
    with a published value (or pass ``expected_head``) to detect that too.
    """
    problems: list[str] = []
    sig_all = True
    chain_ok = True
    key_ids: set[str] = set()
    with read_session(engine) as session:
        rows = records.list_reports(session)
        expected_seq = 1
        for row in rows:
            if row.seq != expected_seq:
                chain_ok = False
                missing = (
                    f"#{expected_seq}" if row.seq == expected_seq + 1 else f"#{expected_seq}..#{row.seq - 1}"
                )
                problems.append(f"report(s) {missing} are missing from the ledger: chain broken (deleted?)")
            expected_seq = row.seq + 1
            sig_ok, key_id, sig_problems, report, body = _check_signature(row.envelope_json, public_key)
            if key_id:
                key_ids.add(key_id)
            if not sig_ok:
                sig_all = False
                problems.extend(f"report {row.id} (#{row.seq}): {p}" for p in sig_problems)
            link = [
                p
                for p in _chain_problems(session, row, report, body)
                if "is missing from the ledger" not in p
            ]
            if link:
                chain_ok = False
                problems.extend(link)
    head = rows[-1].report_hash if rows else GENESIS_HASH
    if expected_head is not None and expected_head != head:
        chain_ok = False
        problems.append(f"the chain head is {head}, expected {expected_head}: reports were removed or added")
    return VerificationResult(
        valid=sig_all and chain_ok,
        signature_valid=sig_all,
        chain_valid=chain_ok,
        problems=problems,
        key_id=",".join(sorted(key_ids)) or None,
        chain_checked=True,
        reports_checked=len(rows),
        head_hash=head,
    )
