"""Ledger: migrations, pragmas, data functions, durability under SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import text
from sqlmodel import select
from tracemark.forensics import commitments
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import (
    LedgerError,
    ReportNotFound,
    current_revision,
    default_ledger_url,
    head_revision,
    make_engine,
    session_scope,
)
from tracemark.forensics.ledger.models import QueryRecord
from tracemark.forensics.signatures import SignaturePair

LEDGER_BACKENDS = ("sqlite", "postgresql")  # tests using ledger_url/engine run on both (tests/conftest.py)


def test_default_url_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TRACEMARK_LEDGER_URL", raising=False)
    monkeypatch.setenv("TRACEMARK_HOME", str(tmp_path / "h"))
    assert default_ledger_url() == f"sqlite:///{tmp_path / 'h' / 'ledger.db'}"
    monkeypatch.setenv("TRACEMARK_LEDGER_URL", "postgresql://u@db/x")
    assert default_ledger_url() == "postgresql://u@db/x"


def test_migrated_to_head_with_wal_and_full_sync(engine, tmp_path, ledger_backend):
    assert current_revision(engine) == head_revision() == "0003_transparency_log"
    if ledger_backend == "postgresql":  # durability is the server's: commits wait for the WAL flush
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            assert conn.exec_driver_sql("SHOW default_transaction_isolation").scalar() == "read committed"
        return
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    assert oct((tmp_path / "ledger.db").stat().st_mode & 0o777) == oct(0o600)


def test_migration_matches_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_reopen_is_idempotent(ledger_url, engine):
    with session_scope(engine) as s:
        records.ensure_account(s, name="acme")
    again = make_engine(ledger_url)
    with session_scope(again) as s:
        assert records.list_accounts(s) == ["acme"]
    again.dispose()


@pytest.mark.parametrize(
    "url, message",
    [
        ("nonsense", "not a database URL"),
        ("mysql://x/y", "unsupported ledger backend"),
        ("postgresql://u@127.0.0.1:1/x", "postgresql"),  # no driver here, or nothing listening: clear error
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(LedgerError, match=message):
        make_engine(url)


def test_unwritable_sqlite_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LedgerError, match="cannot create ledger file"):
        make_engine(f"sqlite:///{tmp_path / 'file' / 'ledger.db'}")


def test_accounts_and_key_versions(engine):
    with session_scope(engine) as s:
        a = records.ensure_account(s, name="acme")
        assert records.ensure_account(s, name="acme").id == a.id
        records.ensure_account(s, name="beta")
        assert records.list_accounts(s) == ["acme", "beta"]
        records.record_key_version(s, version=1, fingerprint="f1", signing_key_id="k1")
        records.record_key_version(s, version=1, fingerprint="f1")
        with pytest.raises(LedgerError, match="different master secret"):
            records.record_key_version(s, version=1, fingerprint="other")
        with pytest.raises(LedgerError):
            records.ensure_account(s, name="  ")
    with session_scope(engine) as s:
        assert [k.version for k in records.list_key_versions(s)] == [1]


def test_issued_signatures(engine):
    p0 = SignaturePair("acme", 1, 0, "x10 =", "1234")
    p1 = SignaturePair("acme", 1, 1, "y11 =", "5678")
    with session_scope(engine) as s:
        for i in range(3):
            records.record_issued_signature(
                s, account="acme", key_version=1, pair=p0, trace_id=f"t{i}", rewriter="watermark"
            )
        records.record_issued_signature(
            s, account="acme", key_version=1, pair=p1, trace_id="t9", rewriter="w"
        )
        with pytest.raises(LedgerError, match="belongs to account"):
            records.record_issued_signature(
                s, account="beta", key_version=1, pair=p0, trace_id="t", rewriter="w"
            )
    with session_scope(engine) as s:
        assert records.issued_counts(s, account="acme") == {p0.pair_id: 3, p1.pair_id: 1}
        assert records.issued_counts(s, account="beta") == {}
        assert records.list_accounts(s) == ["acme"]
        assert [r.pair_id for r in records.issued_for_trace(s, trace_id="t9")] == [p1.pair_id]


def test_investigation_lifecycle(engine):
    with session_scope(engine) as s:
        inv = records.create_investigation(
            s, suspect="hf:/m", suspect_identity={"sha256": "ab"}, params={"a": 1}
        )
        inv_id = inv.id
        key = b"k" * 32
        records.record_query(
            s, investigation_id=inv_id, seq=0, prompt="p", response="r", key=key, meta={"n": 1}
        )
        records.record_query(
            s, investigation_id=inv_id, seq=1, prompt="p2", response="r2", key=key, store_text=False
        )
    with session_scope(engine) as s:
        qs = records.list_queries(s, investigation_id=inv_id)
        assert [q.seq for q in qs] == [0, 1]
        assert qs[0].prompt == "p" and qs[1].prompt is None
        # a keyed commitment, not a plain hash anyone could recompute from a guessed prompt
        assert qs[1].prompt_commitment == commitments.prompt_commitment(key, "p2")
        assert qs[1].prompt_commitment != hashlib.sha256(b"p2").hexdigest()
        done = records.finish_investigation(s, investigation_id=inv_id, verdict="not_detected")
        assert done.status == "finished" and done.finished_at is not None
        with pytest.raises(LedgerError):
            records.finish_investigation(s, investigation_id=inv_id, status="running")
        with pytest.raises(LedgerError, match="no investigation"):
            records.get_investigation(s, investigation_id="nope")
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope(engine) as s:  # (investigation, seq) is unique
        records.record_query(s, investigation_id=inv_id, seq=1, prompt="x", response="y", key=b"k" * 32)


def test_report_rows_extend_chain_only(engine):
    def add(s, rid, seq, prev, h):
        return records.append_report(
            s,
            report_id=rid,
            seq=seq,
            prev_hash=prev,
            report_hash=h,
            verdict="x",
            key_id="k",
            envelope_json="{}",
        )

    with session_scope(engine) as s:
        assert records.latest_report(s) is None
        with pytest.raises(ReportNotFound, match="no reports"):
            records.get_report(s, report_id="latest")
        add(s, "tmr-aaaa1111", 1, records.GENESIS_HASH, "1" * 64)
        add(s, "tmr-aaaa2222", 2, "1" * 64, "2" * 64)
        with pytest.raises(LedgerError, match="does not extend the chain"):
            add(s, "tmr-aaaa3333", 2, "1" * 64, "3" * 64)
    with session_scope(engine) as s:
        assert records.latest_report(s).id == "tmr-aaaa2222"
        assert records.get_report(s, report_id="tmr-aaaa1").seq == 1
        with pytest.raises(ReportNotFound, match="ambiguous"):
            records.get_report(s, report_id="tmr-aaaa")
        with pytest.raises(ReportNotFound, match="no report"):
            records.get_report(s, report_id="tmr-")  # too short to be used as a prefix
    with session_scope(engine) as s, pytest.raises(ReportNotFound):
        records.get_report(s, report_id="unknown")


_WRITER = textwrap.dedent(
    """
    import sys
    from tracemark.forensics.ledger import records
    from tracemark.forensics.ledger.db import make_engine, session_scope
    engine = make_engine(sys.argv[1])
    with session_scope(engine) as s:
        inv = records.create_investigation(s, suspect="hf:/x", investigation_id="inv-kill")
    i = 0
    while True:
        with session_scope(engine) as s:
            records.record_query(s, investigation_id="inv-kill", seq=i, prompt="q" * 2000, response=str(i), key=b"k" * 32)
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_loses_no_committed_row(ledger_url, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), ledger_url], stdout=subprocess.PIPE, text=True)
    confirmed = -1
    deadline = time.monotonic() + 60
    try:
        while confirmed < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            confirmed = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: the loop keeps writing until killed
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert confirmed >= 40, "writer did not get going"
    engine = make_engine(ledger_url)
    with session_scope(engine) as s:
        seqs = set(s.exec(select(QueryRecord.seq).where(QueryRecord.investigation_id == "inv-kill")).all())
        assert set(range(confirmed + 1)) <= seqs  # every commit the writer saw is there
        assert seqs == set(range(len(seqs)))  # and nothing half-written
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()


def test_migration_0002_renames_query_digests_and_keeps_rows(ledger_url):
    """A 0001 ledger upgrades in place: the digest columns become commitment columns, rows are kept."""
    from tracemark.forensics.ledger.db import upgrade

    engine = make_engine(ledger_url, migrate=False)
    upgrade(engine, "0001_initial")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO investigation (id, suspect, suspect_identity, params_json, status, started_at) "
                "VALUES ('inv-old', 'hf:/m', '{}', '{}', 'finished', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO query_record (investigation_id, seq, prompt_sha256, response_sha256, "
                "created_at) VALUES ('inv-old', 0, 'aa', 'bb', '2026-01-01 00:00:00')"
            )
        )
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with session_scope(engine) as s:
        (row,) = records.list_queries(s, investigation_id="inv-old")
        assert (row.prompt_commitment, row.response_commitment) == ("aa", "bb")
    engine.dispose()


def test_plain_postgresql_url_uses_psycopg(postgres_url):
    """``postgresql://`` (no driver named) opens with psycopg 3, the driver of the ``postgres`` extra."""
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    engine = make_engine(plain)
    assert engine.dialect.driver == "psycopg" and current_revision(engine) == head_revision()
    engine.dispose()
