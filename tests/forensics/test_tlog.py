"""Transparency log: append and chain, subjects, concurrency, checkpoints, offline verification, tampering,
inclusion proofs, migration."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading

import pytest
from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect, text
from tracemark.forensics import tlog
from tracemark.forensics.ledger.db import (
    _alembic_config,
    current_revision,
    make_engine,
    session_scope,
    upgrade,
)
from tracemark.forensics.reports.canonical import canonical_json
from tracemark.forensics.reports.dsse import sign_envelope
from tracemark.forensics.tlog import store
from tracemark.foundation.errors import InvalidInput, NotFound

LEDGER_BACKENDS = ("sqlite", "postgresql")  # tests using ledger_url/engine run on both (tests/conftest.py)


def _fill(engine, n: int) -> list[tlog.LogEntryView]:
    return [
        tlog.append_entry(engine, kind="note", subject=f"note:{i}", body={"i": i}) for i in range(1, n + 1)
    ]


def _documented_hash(prev: str, e: dict) -> str:
    """The construction of tracemark.forensics.tlog.entries' module doc, written out independently."""
    fields = {k: e[k] for k in ("seq", "kind", "subject", "logged_at", "body")}
    leaf = hashlib.sha256(b"tracemark-log-leaf/1\x00" + canonical_json(fields)).digest()
    return hashlib.sha256(b"tracemark-log/1\x00" + bytes.fromhex(prev) + leaf).hexdigest()


@pytest.fixture
def pem(master) -> str:
    return master.signing_public_key_pem()


@pytest.fixture
def signed_log(engine, master):
    """Five entries, a checkpoint at 3 and one at 5; returns the export."""
    _fill(engine, 3)
    tlog.sign_checkpoint(engine, master)
    tlog.append_entry(engine, kind="other", body={"x": [1, 2.5, "y"]})
    tlog.append_entry(engine, kind="note", subject="note:5", body={"i": 5})
    tlog.sign_checkpoint(engine, master)
    return tlog.export_log(engine, master=master)


# --- appending ------------------------------------------------------------------------------------
def test_append_builds_the_documented_chain(engine):
    assert tlog.log_head(engine) == (0, tlog.GENESIS) and tlog.log_size(engine) == 0
    entries = _fill(engine, 3)
    prev = tlog.GENESIS
    for seq, e in enumerate(entries, start=1):
        assert e.seq == seq and e.prev_hash == prev
        assert e.entry_hash == _documented_hash(prev, e.as_dict())
        assert e.logged_at.endswith("Z") and len(e.logged_at) == 27
        prev = e.entry_hash
    assert tlog.log_head(engine) == (3, entries[-1].entry_hash)
    assert tlog.get_entry(engine, seq=2) == entries[1]
    assert tlog.get_entry(engine, subject="note:3") == entries[2]
    assert entries[0].as_dict() == {
        "seq": 1,
        "kind": "note",
        "subject": "note:1",
        "body": {"i": 1},
        "prev_hash": tlog.GENESIS,
        "entry_hash": entries[0].entry_hash,
        "logged_at": entries[0].logged_at,
    }


def test_same_subject_is_idempotent_and_a_different_body_conflicts(engine):
    first = tlog.append_entry(engine, kind="note", subject="s", body={"a": 1, "b": [1.0, "x"]})
    again = tlog.append_entry(engine, kind="note", subject="s", body={"b": [1, "x"], "a": 1})  # same JSON
    assert again == first and tlog.log_size(engine) == 1
    with pytest.raises(tlog.LogConflict, match="different body"):
        tlog.append_entry(engine, kind="note", subject="s", body={"a": 2})
    with pytest.raises(tlog.LogConflict, match="different kind"):
        tlog.append_entry(engine, kind="other", subject="s", body={"a": 1, "b": [1, "x"]})
    assert issubclass(tlog.LogConflict, InvalidInput)
    assert tlog.log_size(engine) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "note", "body": [1, 2]}, "must be a JSON object"),
        ({"kind": "note", "body": {"s": {1, 2}}}, "not plain JSON"),
        ({"kind": "note", "body": {"f": float("nan")}}, "not plain JSON"),
        ({"kind": "note", "body": {"big": "x" * 70_000}}, "the limit is"),
        ({"kind": "Bad Kind", "body": {}}, "kind must be"),
        ({"kind": "", "body": {}}, "kind must be"),
        ({"kind": "note", "body": {}, "subject": ""}, "subject must be"),
        ({"kind": "note", "body": {}, "subject": "x" * 301}, "subject must be"),
        ({"kind": "note", "body": {}, "subject": "a\nb"}, "control characters"),
    ],
)
def test_bad_entries_are_refused(engine, kwargs, message):
    with pytest.raises(tlog.LogError, match=message):
        tlog.append_entry(engine, **kwargs)
    assert tlog.log_size(engine) == 0


def test_lookups(engine):
    _fill(engine, 2)
    tlog.append_entry(engine, kind="other", subject="note_%:x", body={})
    tlog.append_entry(engine, kind="other", body={"no": "subject"})
    assert [e.seq for e in tlog.find_entries(engine, kind="note")] == [1, 2]
    assert [e.seq for e in tlog.find_entries(engine, subject_prefix="note:")] == [1, 2]
    assert [e.seq for e in tlog.find_entries(engine, subject_prefix="note_%")] == [3]  # no LIKE wildcards
    assert tlog.find_entries(engine, subject_prefix="NOTE:") == []  # case-sensitive on SQLite too
    assert [e.seq for e in tlog.find_entries(engine, start=2, stop=3)] == [2, 3]
    with pytest.raises(tlog.LogEntryNotFound):
        tlog.get_entry(engine, seq=9)
    with pytest.raises(NotFound, match="subject 'nope'"):
        tlog.get_entry(engine, subject="nope")
    with pytest.raises(tlog.LogError, match="exactly one"):
        tlog.get_entry(engine)


def append_concurrently(url: str, *, rounds: int, threads: int = 4):
    """``threads`` threads, each with its own engine (connection pool, as separate processes have), append
    ``rounds`` private entries and race for ``rounds`` shared subjects; (errors, {subject: seqs seen})."""
    errors: list[BaseException] = []
    seen: dict[str, set[int]] = {}
    lock = threading.Lock()

    def work(t: int) -> None:
        own = make_engine(url)
        try:
            for i in range(rounds):
                tlog.append_entry(own, kind="note", body={"t": t, "i": i})
                shared = tlog.append_entry(own, kind="note", subject=f"shared:{i}", body={"i": i})
                with lock:
                    seen.setdefault(shared.subject, set()).add(shared.seq)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            own.dispose()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    return errors, seen


def test_concurrent_appenders_keep_one_chain(ledger_url, engine, master, pem):
    """Threads with their own engines (connection pools, as separate processes have) append at once, some
    racing for the same subjects: one unbroken chain, each subject once."""
    errors, seen = append_concurrently(ledger_url, rounds=8)
    assert errors == []
    assert tlog.log_size(engine) == 4 * 8 + 8
    assert all(len(seqs) == 1 for seqs in seen.values()) and len(seen) == 8
    tlog.sign_checkpoint(engine, master)
    result = tlog.verify_stored_log(engine, pem)
    assert result.valid, result.problems
    assert result.size == result.signed_size == 40


# --- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_is_signed_and_stored(engine, master, pem):
    with pytest.raises(tlog.LogError, match="empty"):
        tlog.sign_checkpoint(engine, master)
    assert tlog.latest_checkpoint(engine) is None
    entries = _fill(engine, 2)
    envelope = tlog.sign_checkpoint(engine, master)
    assert envelope["payloadType"] == tlog.CHECKPOINT_PAYLOAD_TYPE
    payload = tlog.decode_checkpoint(envelope)
    assert payload["format"] == tlog.CHECKPOINT_FORMAT
    assert (payload["size"], payload["head"], payload["key_id"]) == (
        2,
        entries[-1].entry_hash,
        master.key_id(),
    )
    assert tlog.latest_checkpoint(engine) == envelope
    checked, problems = tlog.check_checkpoint(envelope, master.public_keys())
    assert problems == [] and checked == payload
    other = Ed25519PrivateKey.generate().public_key()
    assert tlog.check_checkpoint(envelope, {"k": other})[0] is None
    with pytest.raises(tlog.CheckpointError, match="not a log checkpoint"):
        tlog.decode_checkpoint({**envelope, "payloadType": "application/vnd.tracemark.report+json"})
    with pytest.raises(tlog.CheckpointError):
        tlog.decode_checkpoint("not json")


# --- verification of a whole log ------------------------------------------------------------------
def test_export_verifies_offline_with_only_the_pem(signed_log, pem, master):
    export = json.loads(json.dumps(signed_log))  # as a third party reads it from a file
    assert export["format"] == tlog.EXPORT_FORMAT
    assert export["public_keys"] == {master.key_id(): pem}
    result = tlog.verify_log(export["entries"], export["checkpoints"], pem)
    assert result.valid, result.problems
    assert (result.size, result.signed_size) == (5, 5)
    assert result.head == export["entries"][-1]["entry_hash"]
    assert "VALID: 5 entries" in result.summary()
    assert tlog.verify_export(export, pem).valid


def _tampered(export: dict, how: str) -> tuple[list, list]:
    entries, checkpoints = copy.deepcopy(export["entries"]), copy.deepcopy(export["checkpoints"])
    if how == "body":
        entries[1]["body"]["i"] = 99
    elif how == "prev_hash":
        entries[2]["prev_hash"] = "ab" * 32
    elif how == "deleted":
        del entries[2]
    elif how == "deleted-newest":
        del entries[-1]
    elif how == "reordered":
        entries[1], entries[2] = entries[2], entries[1]
    elif how == "rewritten":  # change an entry and recompute every hash after it: only checkpoints notice
        entries[1]["body"]["i"] = 99
        prev = entries[0]["entry_hash"]
        for e in entries[1:]:
            e["prev_hash"] = prev
            e["entry_hash"] = prev = _documented_hash(prev, e)
    elif how == "forged-checkpoint":  # signed by a key the verifier does not trust
        payload = {**tlog.decode_checkpoint(checkpoints[-1]), "size": 4, "head": entries[3]["entry_hash"]}
        checkpoints.append(
            sign_envelope(
                canonical_json(payload),
                Ed25519PrivateKey.generate(),
                payload_type=tlog.CHECKPOINT_PAYLOAD_TYPE,
            )
        )
    elif how == "altered-checkpoint":  # payload changed after signing
        payload = {**tlog.decode_checkpoint(checkpoints[0]), "size": 2, "head": entries[1]["entry_hash"]}
        checkpoints[0]["payload"] = base64.b64encode(canonical_json(payload)).decode()
    elif how == "shrinking-checkpoints":
        checkpoints.reverse()
    return entries, checkpoints


@pytest.mark.parametrize(
    "how, message",
    [
        ("body", "entry #2: entry_hash does not match its contents"),
        ("prev_hash", "entry #3: prev_hash does not link"),
        ("deleted", "position 3 holds entry #4"),
        ("deleted-newest", "signs 5 entries but only 4 could be checked"),
        ("reordered", "position 2 holds entry #3"),
        ("rewritten", "the signed head at size 3 differs"),
        ("forged-checkpoint", "checkpoint 3: no signature verifies"),
        ("altered-checkpoint", "checkpoint 1: signature by"),
        ("shrinking-checkpoints", "the log shrank"),
    ],
)
def test_tampering_fails_verify_log(signed_log, pem, how, message):
    entries, checkpoints = _tampered(signed_log, how)
    result = tlog.verify_log(entries, checkpoints, pem)
    assert not result.valid and result.signed_size == 0
    assert any(message in p for p in result.problems), result.problems


def test_wrong_public_key_and_bad_key_input(signed_log):
    other = Ed25519PrivateKey.generate().public_key()
    result = tlog.verify_log(signed_log["entries"], signed_log["checkpoints"], other)
    assert not result.valid and "wrong public key" in result.problems[0]
    with pytest.raises(InvalidInput, match="public key"):
        tlog.verify_log(signed_log["entries"], signed_log["checkpoints"], "not a pem")


def test_malformed_entry_stops_the_check(signed_log, pem):
    entries = copy.deepcopy(signed_log["entries"])
    entries[1]["entry_hash"] = "XYZ"
    result = tlog.verify_log(entries, signed_log["checkpoints"], pem)
    assert not result.valid and "later entries were not checked" in result.problems[0]


def test_stored_log_tampering_is_found(engine, master, pem):
    _fill(engine, 3)
    tlog.sign_checkpoint(engine, master)
    assert tlog.verify_stored_log(engine, pem).valid
    with session_scope(engine) as s:
        s.execute(text("UPDATE log_checkpoint SET size = 2"))
    result = tlog.verify_stored_log(engine, pem)
    assert not result.valid and "size/head columns differ" in result.problems[-1]
    with session_scope(engine) as s:
        s.execute(text("UPDATE log_checkpoint SET size = 3"))
        s.execute(text("UPDATE log_entry SET body_json = :b WHERE seq = 2"), {"b": '{"i":7}'})
    assert "entry #2: entry_hash does not match" in tlog.verify_stored_log(engine, pem).problems[0]


# --- inclusion proofs -----------------------------------------------------------------------------
def test_inclusion_proof_verifies_and_discloses_only_its_entries(signed_log, engine, pem):
    proof = tlog.inclusion_proof(engine, seqs=[4, 2])
    assert proof["format"] == tlog.INCLUSION_FORMAT
    assert [e["seq"] for e in proof["entries"]] == [2, 4]
    assert [c["seq"] for c in proof["chain"]] == [2, 3, 4, 5]
    assert proof["start_prev_hash"] == signed_log["entries"][0]["entry_hash"]
    assert '"note:3"' not in json.dumps(proof)  # entry 3 appears by its leaf hash only
    result = tlog.verify_inclusion(json.loads(json.dumps(proof)), pem)
    assert result.valid, result.problems
    assert (result.size, result.head) == (5, signed_log["entries"][-1]["entry_hash"])
    first = tlog.inclusion_proof(engine, seqs=[1])
    assert first["start_prev_hash"] == tlog.GENESIS and tlog.verify_inclusion(first, pem).valid


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: p["entries"][0]["body"].update(i=9), "entry #2: its contents do not match"),
        (
            lambda p: p["chain"][1].update(leaf_hash="cd" * 32),
            "does not lead to the checkpoint's signed head",
        ),
        (lambda p: p.update(start_prev_hash="ef" * 32), "entry #2: prev_hash does not link"),
        (lambda p: p["chain"].pop(), "the chain ends at entry #4"),
        (lambda p: p["chain"].pop(1), "not consecutive"),
        (lambda p: p["checkpoint"].update(signatures=[{"keyid": "x", "sig": "AAAA"}]), "checkpoint:"),
        (lambda p: p["entries"].append(copy.deepcopy(p["entries"][0])), "included twice"),
        (lambda p: p.update(format="x"), "not an inclusion proof"),
    ],
)
def test_tampered_inclusion_proof_fails(signed_log, engine, pem, tamper, message):
    proof = tlog.inclusion_proof(engine, seqs=[2, 4])
    tamper(proof)
    result = tlog.verify_inclusion(proof, pem)
    assert not result.valid
    assert any(message in p for p in result.problems), result.problems


def test_inclusion_proof_needs_a_covering_checkpoint(engine, master, pem):
    _fill(engine, 2)
    with pytest.raises(tlog.LogError, match="no signed checkpoint covers entry #2"):
        tlog.inclusion_proof(engine, seqs=[2])
    old = tlog.sign_checkpoint(engine, master)
    tlog.append_entry(engine, kind="note", body={"late": True})
    with pytest.raises(tlog.LogError, match="the checkpoint covers 2 entries"):
        tlog.inclusion_proof(engine, seqs=[3], checkpoint=old)
    proof = tlog.inclusion_proof(engine, seqs=[3], master=master)  # signs a fresh checkpoint
    assert tlog.decode_checkpoint(proof["checkpoint"])["size"] == 3
    assert tlog.decode_checkpoint(tlog.latest_checkpoint(engine))["size"] == 3
    assert tlog.verify_inclusion(proof, pem).valid
    assert tlog.verify_inclusion(tlog.inclusion_proof(engine, seqs=[1], checkpoint=old), pem).valid
    with pytest.raises(tlog.LogEntryNotFound):
        tlog.inclusion_proof(engine, seqs=[4])
    for bad in ([], [0], ["1"], [True]):
        with pytest.raises(tlog.LogError):
            tlog.inclusion_proof(engine, seqs=bad)


# --- migration ------------------------------------------------------------------------------------
def test_fresh_ledger_has_the_log_tables(engine):
    assert current_revision(engine) == "0003_transparency_log"
    tables = set(inspect(engine).get_table_names())
    assert {"log_entry", "log_checkpoint"} <= tables


def test_migration_0003_upgrades_a_0002_ledger_and_downgrades(ledger_url):
    engine = make_engine(ledger_url, migrate=False)
    upgrade(engine, "0002_query_commitments")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO account (name, created_at) VALUES ('acme', '2026-01-01 00:00:00')"))
    assert "log_entry" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert current_revision(engine) == "0003_transparency_log"
    assert tlog.append_entry(engine, kind="note", body={}).seq == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM account")).scalar() == "acme"
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002_query_commitments")
    assert "log_entry" not in inspect(engine).get_table_names()
    engine.dispose()


# --- PostgreSQL: concurrent appenders across connection pools ------------------------------------
@pytest.fixture
def pg_url(postgres_url):
    """An empty database on the suite's PostgreSQL server (tests/conftest.py)."""
    return postgres_url


@pytest.mark.parametrize("locked", [True, False], ids=["advisory-lock", "constraints-and-retry-only"])
def test_postgresql_concurrent_appenders_keep_one_chain(pg_url, master, pem, monkeypatch, locked):
    if not locked:  # without the advisory lock, the unique constraints and the retry loop must hold
        monkeypatch.setattr(store, "lock_log", lambda session: None)
    engine = make_engine(pg_url)
    errors, _ = append_concurrently(pg_url, rounds=6)
    assert errors == []
    assert tlog.log_size(engine) == 4 * 6 + 6
    tlog.sign_checkpoint(engine, master)
    result = tlog.verify_stored_log(engine, pem)
    assert result.valid and result.signed_size == 30, result.problems
    proof = tlog.inclusion_proof(engine, seqs=[3, 17])
    assert tlog.verify_inclusion(proof, pem).valid
    engine.dispose()
