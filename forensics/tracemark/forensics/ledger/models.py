"""Ledger tables. Every schema change needs an Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = False) -> Column:
    return Column(DateTime(timezone=True), nullable=nullable)


class Account(SQLModel, table=True):
    """An API account whose traces carry keyed signature pairs."""

    __tablename__ = "account"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class KeyVersion(SQLModel, table=True):
    """A master-secret version seen by this ledger (public data only)."""

    __tablename__ = "key_version"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    fingerprint: str = Field(max_length=64)
    signing_key_id: str = Field(default="", max_length=80)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class IssuedSignature(SQLModel, table=True):
    """One trace that received one signature pair."""

    __tablename__ = "issued_signature"

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200, foreign_key="account.name", index=True)
    key_version: int
    pair_index: int
    pair_id: str = Field(max_length=40, index=True)
    trace_id: str = Field(max_length=200, index=True)
    rewriter: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Investigation(SQLModel, table=True):
    """One forensic investigation of a suspect model."""

    __tablename__ = "investigation"

    id: str = Field(primary_key=True, max_length=64)
    suspect: str = Field(sa_column=Column(Text, nullable=False))
    suspect_identity: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    params_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    status: str = Field(default="running", max_length=32, index=True)
    verdict: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class QueryRecord(SQLModel, table=True):
    """One query sent to a suspect and its response: keyed commitments always (HMAC under the
    investigation's commitment key, never a plain hash: triggers are few enough to enumerate), text if
    the investigation stores it."""

    __tablename__ = "query_record"
    __table_args__ = (UniqueConstraint("investigation_id", "seq", name="uq_query_record_investigation_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    investigation_id: str = Field(max_length=64, foreign_key="investigation.id", index=True)
    seq: int
    prompt_commitment: str = Field(max_length=64)
    response_commitment: str = Field(max_length=64)
    prompt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    response: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    meta_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Report(SQLModel, table=True):
    """A signed evidence report (DSSE envelope), hash-chained to the previous one by ``seq``."""

    __tablename__ = "report"

    id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(unique=True, index=True)
    investigation_id: str | None = Field(default=None, max_length=64, foreign_key="investigation.id")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    prev_hash: str = Field(max_length=64, unique=True)
    report_hash: str = Field(max_length=64, unique=True)
    verdict: str = Field(max_length=32)
    key_id: str = Field(default="", max_length=80)
    envelope_json: str = Field(sa_column=Column(Text, nullable=False))


class LogEntry(SQLModel, table=True):
    """One entry of the append-only transparency log (:mod:`tracemark.forensics.tlog`), hash-chained by
    ``seq``. ``subject`` (optional) names what the entry is about; at most one entry per subject."""

    __tablename__ = "log_entry"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    kind: str = Field(max_length=64, index=True)
    subject: str | None = Field(default=None, max_length=300, unique=True)
    body_json: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64, unique=True)
    entry_hash: str = Field(max_length=64, unique=True)
    logged_at: datetime = Field(sa_column=_ts())


class LogCheckpoint(SQLModel, table=True):
    """A signed checkpoint of the transparency log: its size and head hash in a DSSE envelope."""

    __tablename__ = "log_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    size: int = Field(index=True)
    head_hash: str = Field(max_length=64)
    envelope_json: str = Field(sa_column=Column(Text, nullable=False))
    key_id: str = Field(default="", max_length=80)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
