"""Verification of stored and loose reports: signature, canonical payload, chain links, and every ledger
column that repeats a signed value (a column edited after signing makes the report INVALID)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import read_session
from tracemark.forensics.ledger.models import Report
from tracemark.forensics.reports.canonical import CanonicalJSONError, canonical_json
from tracemark.forensics.reports.core import (
    GENESIS_HASH,
    RESERVED_FIELDS,
    _parse_time,
    _verdict_of,
    decode_report,
    report_hash,
)
from tracemark.forensics.reports.dsse import (
    PAYLOAD_TYPE,
    EnvelopeError,
    _b64decode,
    parse_envelope,
    trusted_keys,
    verify_signatures,
)


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


_CREATED_AT_TOLERANCE_S = 1.0  # ledgers written before the column copied the signed time differ by ms


def _column_problems(label: str, row: Report, report: Mapping[str, Any]) -> list[str]:
    """Every stored column that shows something the signed report also says, compared with it."""
    inv = report.get("investigation_id")
    try:
        key_ids = {str(s.get("keyid") or "") for s in parse_envelope(row.envelope_json)["signatures"]}
    except EnvelopeError:
        key_ids = set()
    checks = [
        ("id", "report_id", row.id, report.get("report_id")),
        ("seq", "sequence", row.seq, report.get("sequence")),
        ("prev_hash", "prev_report_hash", row.prev_hash, report.get("prev_report_hash")),
        ("verdict", "verdict", row.verdict, _verdict_of(report)),
        ("investigation_id", "investigation_id", row.investigation_id, inv if isinstance(inv, str) else None),
    ]
    problems = [
        f"{label}: the ledger's {column} column ({stored!r}) differs from the signed report's {name} "
        f"({signed!r})"
        for column, name, stored, signed in checks
        if stored != signed
    ]
    if row.key_id not in key_ids:
        problems.append(f"{label}: the ledger's key_id column ({row.key_id!r}) is not the envelope's signer")
    signed_time, stored_time = _parse_time(report.get("created_at")), _parse_time(row.created_at)
    if (
        signed_time is None
        or stored_time is None
        or (abs((signed_time - stored_time).total_seconds()) > _CREATED_AT_TOLERANCE_S)
    ):
        problems.append(
            f"{label}: the ledger's created_at column ({row.created_at}) differs from the signed report's "
            f"created_at ({report.get('created_at')!r})"
        )
    return problems


def _chain_problems(session, row: Report, report: dict | None, body: bytes | None) -> list[str]:  # noqa: ANN001
    """Problems with ``row``'s place in the chain: stored hash, signed metadata, link to the previous row."""
    problems: list[str] = []
    label = f"report {row.id} (#{row.seq})"
    if body is not None and report_hash(body) != row.report_hash:
        problems.append(f"{label}: the stored hash does not match the report content (report_hash column)")
    if report is not None:
        problems.extend(_column_problems(label, row, report))
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
