"""Append to and read the transparency log in the ledger (tables ``log_entry`` and ``log_checkpoint``).

Appending is one serialised write transaction: ``BEGIN IMMEDIATE`` on SQLite, an advisory transaction
lock on PostgreSQL; the unique constraints on ``seq``, ``prev_hash``, ``entry_hash`` and ``subject`` back
this up, and a writer that loses a race retries against the new head.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from tracemark.forensics.ledger.db import read_session, session_scope
from tracemark.forensics.ledger.models import LogEntry
from tracemark.forensics.tlog.entries import (
    GENESIS,
    LogBusy,
    LogConflict,
    LogEntryNotFound,
    LogEntryView,
    LogError,
    body_from_json,
    canonical_body,
    check_kind,
    check_subject,
    entry_hash,
    format_time,
)

APPEND_ATTEMPTS = 20
_PG_LOG_LOCK = 0x746D_6C67  # advisory lock key of the transparency log on PostgreSQL ("tmlg")


def view_of(row: LogEntry) -> LogEntryView:
    return LogEntryView(
        seq=row.seq,
        kind=row.kind,
        subject=row.subject,
        body=body_from_json(row.body_json),
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
        logged_at=format_time(row.logged_at),
    )


def lock_log(session: Session) -> None:
    """Serialise log writers on PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` already does)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOG_LOCK})


def head_row(session: Session) -> LogEntry | None:
    return session.exec(select(LogEntry).order_by(LogEntry.seq.desc()).limit(1)).first()


def _now() -> datetime:
    return datetime.now(UTC)


def _existing(row: LogEntry, kind: str, body: bytes) -> LogEntryView:
    if row.kind == kind and row.body_json.encode("utf-8") == body:
        return view_of(row)
    raise LogConflict(
        f"subject {row.subject!r} is already logged as entry #{row.seq} with a different "
        f"{'kind' if row.kind != kind else 'body'}; log entries are never replaced"
    )


def append_entry(
    engine: Engine, *, kind: str, body: dict[str, Any], subject: str | None = None
) -> LogEntryView:
    """Append an entry and return it; with a ``subject`` already logged, return that entry when its kind and
    body are identical, else raise :class:`LogConflict`. Bad kind/subject/body: :class:`LogError`."""
    kind = check_kind(kind)
    subject = check_subject(subject)
    data = canonical_body(body)
    text_body = data.decode("utf-8")
    parsed = body_from_json(text_body)
    for attempt in range(APPEND_ATTEMPTS):
        try:
            with session_scope(engine) as session:
                lock_log(session)
                if subject is not None:
                    row = session.exec(select(LogEntry).where(LogEntry.subject == subject)).first()
                    if row is not None:
                        return _existing(row, kind, data)
                head = head_row(session)
                seq = 1 if head is None else head.seq + 1
                prev = GENESIS if head is None else head.entry_hash
                moment = _now()
                logged_at = format_time(moment)
                row = LogEntry(
                    seq=seq,
                    kind=kind,
                    subject=subject,
                    body_json=text_body,
                    prev_hash=prev,
                    entry_hash=entry_hash(prev, seq, kind, subject, logged_at, parsed),
                    logged_at=moment,
                )
                session.add(row)
                session.flush()
                return view_of(row)
        except IntegrityError:  # another writer took this position (or this subject) first
            time.sleep(random.uniform(0.001, 0.005 * (attempt + 1)))
    raise LogBusy(f"could not append to the log: the head kept changing ({APPEND_ATTEMPTS} attempts)")


def get_entry(engine: Engine, *, seq: int | None = None, subject: str | None = None) -> LogEntryView:
    """The entry at ``seq`` or with ``subject`` (exactly one of them); :class:`LogEntryNotFound`."""
    if (seq is None) == (subject is None):
        raise LogError("give exactly one of seq and subject")
    with read_session(engine) as session:
        if seq is not None:
            row = session.get(LogEntry, seq)
            what = f"#{seq}"
        else:
            row = session.exec(select(LogEntry).where(LogEntry.subject == subject)).first()
            what = f"with subject {subject!r}"
        if row is None:
            raise LogEntryNotFound(f"no log entry {what}")
        return view_of(row)


def find_entries(
    engine: Engine,
    *,
    kind: str | None = None,
    subject_prefix: str | None = None,
    start: int = 1,
    stop: int | None = None,
) -> list[LogEntryView]:
    """Entries in ``seq`` order, optionally of one ``kind``, with a subject starting with ``subject_prefix``,
    and with ``start <= seq <= stop``."""
    query = select(LogEntry).where(LogEntry.seq >= start)
    if stop is not None:
        query = query.where(LogEntry.seq <= stop)
    if kind is not None:
        query = query.where(LogEntry.kind == kind)
    if subject_prefix is not None:
        query = query.where(LogEntry.subject.startswith(subject_prefix, autoescape=True))
    with read_session(engine) as session:
        rows = session.exec(query.order_by(LogEntry.seq)).all()
    # SQLite's LIKE ignores ASCII case: the prefix is checked again, case-sensitively as on PostgreSQL
    return [view_of(r) for r in rows if subject_prefix is None or r.subject.startswith(subject_prefix)]


def log_size(engine: Engine) -> int:
    """How many entries the log holds."""
    with read_session(engine) as session:
        return int(session.exec(select(func.count()).select_from(LogEntry)).one())


def log_head(engine: Engine) -> tuple[int, str]:
    """``(size, head hash)``; ``(0, GENESIS)`` for an empty log."""
    with read_session(engine) as session:
        head = head_row(session)
        return (0, GENESIS) if head is None else (head.seq, head.entry_hash)
