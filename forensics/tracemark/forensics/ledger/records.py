"""Keyword-only data functions over the ledger tables. The caller owns the session (and the commit)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from tracemark.forensics import commitments
from tracemark.forensics.ledger.db import LedgerError, ReportNotFound
from tracemark.forensics.ledger.models import (
    Account,
    Investigation,
    IssuedSignature,
    KeyVersion,
    QueryRecord,
    Report,
    utcnow,
)
from tracemark.forensics.signatures import SignaturePair

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first report in a chain."""

INVESTIGATION_STATUSES = ("running", "finished", "failed", "cancelled")
MAX_ACCOUNT_NAME = 200


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


# --- accounts and keys ------------------------------------------------------------------------
def _check_account_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise LedgerError("account name must be a non-empty string")
    if len(name) > MAX_ACCOUNT_NAME:
        raise LedgerError(f"account name longer than {MAX_ACCOUNT_NAME} characters")
    return name


def ensure_account(session: Session, *, name: str) -> Account:
    """Return the account row named ``name``, creating it if needed (safe against concurrent creators)."""
    _check_account_name(name)
    row = session.exec(select(Account).where(Account.name == name)).first()
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = Account(name=name)
            session.add(row)
    except IntegrityError:  # created concurrently by another writer
        row = session.exec(select(Account).where(Account.name == name)).one()
    return row


def list_accounts(session: Session) -> list[str]:
    """Every account name, sorted."""
    return list(session.exec(select(Account.name).order_by(Account.name)).all())


def record_key_version(
    session: Session,
    *,
    version: int,
    fingerprint: str,
    signing_key_id: str = "",
    created_at: datetime | None = None,
) -> KeyVersion:
    """Record a master-secret version (idempotent). A different fingerprint for a known version means the
    ledger was written under another master secret: :class:`LedgerError`."""
    row = session.get(KeyVersion, version)
    if row is not None:
        if row.fingerprint != fingerprint:
            raise LedgerError(
                f"key version {version} in the ledger has fingerprint {row.fingerprint}, the master secret "
                f"has {fingerprint}: this ledger belongs to a different master secret"
            )
        if signing_key_id and not row.signing_key_id:
            row.signing_key_id = signing_key_id
            session.add(row)
        return row
    row = KeyVersion(
        version=version,
        fingerprint=fingerprint,
        signing_key_id=signing_key_id,
        created_at=created_at or utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return record_key_version(
            session, version=version, fingerprint=fingerprint, signing_key_id=signing_key_id
        )
    return row


def list_key_versions(session: Session) -> list[KeyVersion]:
    return list(session.exec(select(KeyVersion).order_by(KeyVersion.version)).all())


# --- issued signatures ------------------------------------------------------------------------
def record_issued_signature(
    session: Session, *, account: str, key_version: int, pair: SignaturePair, trace_id: str, rewriter: str
) -> IssuedSignature:
    """Record that trace ``trace_id`` received ``pair`` (the account row is created if missing)."""
    if pair.account != account or pair.key_version != key_version:
        raise LedgerError(
            f"pair {pair.pair_id} belongs to account {pair.account!r} v{pair.key_version}, "
            f"not {account!r} v{key_version}"
        )
    if not trace_id:
        raise LedgerError("trace_id must be non-empty")
    ensure_account(session, name=account)
    row = IssuedSignature(
        account=account,
        key_version=key_version,
        pair_index=pair.index,
        pair_id=pair.pair_id,
        trace_id=trace_id,
        rewriter=rewriter,
    )
    session.add(row)
    session.flush()
    return row


def issued_counts(session: Session, *, account: str) -> dict[str, int]:
    """How many traces received each pair of ``account``: ``{pair_id: count}``."""
    rows = session.exec(
        select(IssuedSignature.pair_id, func.count())
        .where(IssuedSignature.account == account)
        .group_by(IssuedSignature.pair_id)
    ).all()
    return {pair_id: int(n) for pair_id, n in rows}


def delivered_pairs(session: Session) -> dict[tuple[str, int], dict[int, str]]:
    """``{(account, key version): {pair index: pair id}}`` of every pair some trace carried."""
    rows = session.exec(
        select(
            IssuedSignature.account,
            IssuedSignature.key_version,
            IssuedSignature.pair_index,
            IssuedSignature.pair_id,
        ).distinct()
    ).all()
    out: dict[tuple[str, int], dict[int, str]] = {}
    for account, version, index, pair_id in rows:
        out.setdefault((account, int(version)), {})[int(index)] = pair_id
    return out


def issued_for_trace(session: Session, *, trace_id: str) -> list[IssuedSignature]:
    return list(session.exec(select(IssuedSignature).where(IssuedSignature.trace_id == trace_id)).all())


# --- investigations and queries ---------------------------------------------------------------
def create_investigation(
    session: Session,
    *,
    suspect: str,
    suspect_identity: Mapping[str, Any] | str | None = None,
    params: Mapping[str, Any] | str | None = None,
    investigation_id: str | None = None,
) -> Investigation:
    """Start an investigation (status ``running``); ``investigation_id`` defaults to a random id."""
    if not suspect:
        raise LedgerError("suspect must be non-empty")
    row = Investigation(
        id=investigation_id or f"inv-{uuid.uuid4().hex[:16]}",
        suspect=suspect,
        suspect_identity=_json(suspect_identity or {}),
        params_json=_json(params or {}),
        status="running",
    )
    session.add(row)
    session.flush()
    return row


def get_investigation(session: Session, *, investigation_id: str) -> Investigation:
    row = session.get(Investigation, investigation_id)
    if row is None:
        raise LedgerError(f"no investigation {investigation_id!r} in the ledger")
    return row


def record_query(
    session: Session,
    *,
    investigation_id: str,
    seq: int,
    prompt: str,
    response: str,
    key: bytes,
    store_text: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> QueryRecord:
    """Record query ``seq`` of an investigation: keyed commitments to prompt and response always (``key``:
    the investigation's commitment key, :mod:`~tracemark.forensics.commitments`), texts if asked."""
    row = QueryRecord(
        investigation_id=investigation_id,
        seq=seq,
        prompt_commitment=commitments.prompt_commitment(key, prompt),
        response_commitment=commitments.response_commitment(key, response),
        prompt=prompt if store_text else None,
        response=response if store_text else None,
        meta_json=_json(meta) if meta is not None else None,
    )
    session.add(row)
    session.flush()
    return row


def list_queries(session: Session, *, investigation_id: str) -> list[QueryRecord]:
    return list(
        session.exec(
            select(QueryRecord)
            .where(QueryRecord.investigation_id == investigation_id)
            .order_by(QueryRecord.seq)
        ).all()
    )


def finish_investigation(
    session: Session,
    *,
    investigation_id: str,
    status: str = "finished",
    verdict: str | None = None,
    error: str | None = None,
) -> Investigation:
    """Close an investigation with a final ``status`` (finished | failed | cancelled) and verdict."""
    if status not in INVESTIGATION_STATUSES or status == "running":
        raise LedgerError(f"final status must be one of finished, failed, cancelled; got {status!r}")
    row = get_investigation(session, investigation_id=investigation_id)
    row.status = status
    row.verdict = verdict
    row.error = error
    row.finished_at = utcnow()
    session.add(row)
    session.flush()
    return row


# --- reports ----------------------------------------------------------------------------------
def chain_head(session: Session) -> Report | None:
    """The newest report (highest ``seq``), or ``None`` when the chain is empty."""
    return session.exec(select(Report).order_by(Report.seq.desc()).limit(1)).first()


def append_report(
    session: Session,
    *,
    report_id: str,
    seq: int,
    prev_hash: str,
    report_hash: str,
    verdict: str,
    key_id: str,
    envelope_json: str,
    investigation_id: str | None = None,
    created_at: datetime | None = None,
) -> Report:
    """Append a report row (``created_at``: the signed report's time); ``seq``/``prev_hash`` must extend
    the current head (else :class:`LedgerError`).

    Call inside a write session (``session_scope(engine, immediate=True)``) so the check and the insert
    are one serialised transaction; unique constraints on ``seq`` and ``prev_hash`` back this up.
    """
    head = chain_head(session)
    want_seq = 1 if head is None else head.seq + 1
    want_prev = GENESIS_HASH if head is None else head.report_hash
    if seq != want_seq or prev_hash != want_prev:
        raise LedgerError(
            f"report does not extend the chain: it links to #{seq - 1} ({prev_hash[:12]}), the head is "
            f"#{want_seq - 1} ({want_prev[:12]}); rebuild it against the current head"
        )
    row = Report(
        id=report_id,
        seq=seq,
        investigation_id=investigation_id,
        prev_hash=prev_hash,
        report_hash=report_hash,
        verdict=verdict,
        key_id=key_id,
        envelope_json=envelope_json,
        created_at=created_at or utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_report(session: Session, *, report_id: str) -> Report:
    """The report with id ``report_id``; ``latest`` or a unique id prefix (>= 6 chars) also work."""
    if report_id == "latest":
        row = chain_head(session)
        if row is None:
            raise ReportNotFound("the ledger holds no reports yet")
        return row
    row = session.get(Report, report_id)
    if row is not None:
        return row
    if len(report_id) >= 6:
        hits = session.exec(
            select(Report).where(Report.id.startswith(report_id, autoescape=True)).limit(2)
        ).all()
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ReportNotFound(f"report id prefix {report_id!r} is ambiguous")
    raise ReportNotFound(f"no report {report_id!r} in the ledger")


def get_report_by_seq(session: Session, *, seq: int) -> Report | None:
    return session.exec(select(Report).where(Report.seq == seq)).first()


def latest_report(session: Session) -> Report | None:
    """The newest report, or ``None``."""
    return chain_head(session)


def list_reports(session: Session) -> list[Report]:
    """Every report in chain order."""
    return list(session.exec(select(Report).order_by(Report.seq)).all())
