"""Evidence reports: canonical JSON, DSSE/Ed25519, hash chain, tamper detection, concurrency."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import ReportNotFound, make_engine
from tracemark.forensics.reports import (
    GENESIS_HASH,
    PAYLOAD_TYPE,
    CanonicalJSONError,
    ChainConflict,
    ReportError,
    build_report,
    canonical_json,
    decode_report,
    is_canonical,
    issue_report,
    list_reports,
    load_report,
    pae,
    report_hash,
    sign_report,
    store_report,
    to_plain,
    verify_chain,
    verify_envelope,
    verify_stored_report,
)
from tracemark.forensics.reports.canonical import format_float

LEDGER_BACKENDS = ("sqlite", "postgresql")  # tests using ledger_url/engine run on both (tests/conftest.py)


def findings(p: float = 1e-9, verdict: str = "detected") -> dict:
    return {
        "suspect_identity": {"kind": "hf", "weights_sha256": "ab" * 32},
        "decision": {"verdict": verdict, "alpha": 1e-3, "p_value": p, "attributed_account": "acme"},
        "statistics": {"accounts": [{"account": "acme", "fisher_statistic": 45.2, "df": 4, "p_value": p}]},
        "queries": [{"seq": 0, "prompt_sha256": "0" * 64, "response_sha256": "1" * 64}],
        "seeds": {"decoy_seed_commitment": "f" * 64},
    }


# --- canonical JSON ------------------------------------------------------------------------------
def test_canonical_json_rules():
    value = {"b": [1, 2.5, None, True], "a": {"z": 'é\n"\\\x01', "y": False}, "c": -0.0}
    assert (
        canonical_json(value)
        == '{"a":{"y":false,"z":"é\\n\\"\\\\\\u0001"},"b":[1,2.5,null,true],"c":0}'.encode()
    )
    assert is_canonical(canonical_json(value))
    assert not is_canonical(json.dumps(value).encode())
    # keys sort by UTF-16 code units (RFC 8785), not by code points
    assert canonical_json({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode()
    assert canonical_json(2**70) == str(2**70).encode()


@pytest.mark.parametrize(
    "x, expected",
    [
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (123.5, "123.5"),
        (100.0, "100"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (333333333.3333333, "333333333.3333333"),
        (-2.5e-10, "-2.5e-10"),
    ],
)
def test_float_format_matches_ecmascript(x, expected):
    assert format_float(x) == expected
    assert float(expected) == x


def test_canonical_refuses_non_json():
    with pytest.raises(CanonicalJSONError, match="stats.p"):
        canonical_json({"stats": {"p": float("nan")}})
    with pytest.raises(CanonicalJSONError, match="non-string key"):
        canonical_json({1: 2})
    with pytest.raises(CanonicalJSONError, match="set"):
        canonical_json({"s": {1}})


def test_to_plain_converts_numpy_and_non_finite():
    plain = to_plain(
        {"a": np.float64(0.5), "b": np.arange(3), "c": (1, 2), "d": float("-inf"), "e": np.int64(7)}
    )
    assert plain == {"a": 0.5, "b": [0, 1, 2], "c": [1, 2], "d": "-Infinity", "e": 7}
    assert type(plain["e"]) is int


# --- DSSE ----------------------------------------------------------------------------------------
def test_pae_matches_dsse_spec():
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_envelope_verifies_with_plain_ed25519(master):
    """A standard DSSE verifier needs nothing from tracemark: base64, PAE, Ed25519."""
    report = build_report(findings())
    env = sign_report(report, master)
    assert set(env) == {"payload", "payloadType", "signatures"}
    assert env["payloadType"] == PAYLOAD_TYPE
    body = base64.b64decode(env["payload"])
    assert body == canonical_json(report)
    sig = base64.b64decode(env["signatures"][0]["sig"])
    t = PAYLOAD_TYPE.encode()
    master.signing_public_key().verify(sig, b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body))
    assert env["signatures"][0]["keyid"] == master.key_id()


def test_build_report_adds_metadata_and_refuses_reserved(master):
    r = build_report({**findings(), "extra": {"x": float("nan")}})
    assert r["report_format"] == "tracemark-report/2"
    assert r["report_id"].startswith("tmr-") and r["sequence"] == 1 and r["prev_report_hash"] == GENESIS_HASH
    assert r["software"]["name"] == "tracemark" and r["software"]["version"]
    assert r["software"]["signature_derivation"] == "tm-sig-v1"
    assert r["extra"]["x"] == "NaN"
    with pytest.raises(ReportError, match="reserved"):
        build_report({"report_id": "x"})
    with pytest.raises(ReportError, match="64 lowercase hex"):
        build_report({}, prev_report_hash="abc")


# --- chain in the ledger -----------------------------------------------------------------------
def test_issue_verify_and_load(engine, master):
    stored = [issue_report(engine, data=findings(), master=master, investigation_id=None) for _ in range(3)]
    assert [s.seq for s in stored] == [1, 2, 3]
    assert stored[0].prev_hash == GENESIS_HASH
    assert (
        stored[1].prev_hash
        == stored[0].report_hash
        == report_hash(base64.b64decode(stored[0].envelope["payload"]))
    )
    assert stored[2].report["prev_report_hash"] == stored[1].report_hash
    assert stored[0].verdict == "detected"
    for s in stored:
        res = verify_stored_report(engine, s.report_id, public_key=master)
        assert res.valid and res.signature_valid and res.chain_valid and res.problems == [], res.problems
        assert res.key_id == master.key_id()
    chain = verify_chain(engine, master)
    assert chain.valid and chain.reports_checked == 3 and chain.head_hash == stored[-1].report_hash
    assert load_report(engine, "latest").report_id == stored[-1].report_id
    assert load_report(engine, stored[0].report_id[:10]).seq == 1
    assert [s.report_id for s in list_reports(engine)] == [s.report_id for s in stored]
    with pytest.raises(ReportNotFound):
        load_report(engine, "tmr-doesnotexist")
    with pytest.raises(ReportNotFound):
        verify_stored_report(engine, "tmr-doesnotexist", public_key=master)
    res = verify_envelope(stored[1].envelope_json, public_key=master, engine=engine)
    assert res.valid and res.chain_checked


def _flip_payload_byte(envelope: dict, index: int = 40) -> dict:
    body = bytearray(base64.b64decode(envelope["payload"]))
    body[index] ^= 0x01
    return {**envelope, "payload": base64.b64encode(bytes(body)).decode()}


def test_flipped_payload_byte_is_invalid(engine, master):
    stored = issue_report(engine, data=findings(), master=master)
    tampered = _flip_payload_byte(stored.envelope)
    res = verify_envelope(tampered, public_key=master)
    assert not res.valid and not res.signature_valid
    assert any("changed after signing" in p for p in res.problems), res.problems
    # the same flip inside the ledger's stored copy
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE report SET envelope_json = :e WHERE id = :i"),
            {"e": json.dumps(tampered), "i": stored.report_id},
        )
    res = verify_stored_report(engine, stored.report_id, public_key=master)
    assert not res.valid and not res.signature_valid and not res.chain_valid
    assert any("changed after signing" in p for p in res.problems)
    assert any("stored hash does not match" in p for p in res.problems)


def test_every_single_byte_flip_is_caught(master):
    env = sign_report(build_report(findings()), master)
    n = len(base64.b64decode(env["payload"]))
    for i in range(0, n, max(1, n // 40)):
        assert not verify_envelope(_flip_payload_byte(env, i), public_key=master).valid


def test_wrong_public_key_is_invalid(engine, master):
    stored = issue_report(engine, data=findings(), master=master)
    other = Ed25519PrivateKey.generate().public_key()
    res = verify_stored_report(engine, stored.report_id, public_key=other)
    assert not res.valid and not res.signature_valid and res.chain_valid
    assert any("wrong public key" in p for p in res.problems), res.problems
    assert verify_envelope(stored.envelope, public_key=master.signing_public_key_pem()).valid


def test_deleted_middle_report_breaks_chain(engine, master):
    stored = [issue_report(engine, data=findings(), master=master) for _ in range(4)]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM report WHERE id = :i"), {"i": stored[1].report_id})
    res = verify_stored_report(engine, stored[2].report_id, public_key=master)
    assert not res.valid and res.signature_valid and not res.chain_valid
    assert any("#2 is missing" in p and "chain broken" in p for p in res.problems), res.problems
    chain = verify_chain(engine, master)
    assert not chain.valid and not chain.chain_valid and chain.signature_valid
    assert any("#2 are missing" in p for p in chain.problems), chain.problems
    assert verify_stored_report(engine, stored[0].report_id, public_key=master).valid


def test_renumbered_or_relinked_rows_are_caught(engine, master):
    stored = [issue_report(engine, data=findings(), master=master) for _ in range(3)]
    with engine.begin() as conn:  # hide the deletion of #2 by renumbering #3
        conn.execute(text("DELETE FROM report WHERE id = :i"), {"i": stored[1].report_id})
        conn.execute(
            text("UPDATE report SET seq = 2, prev_hash = :h WHERE id = :i"),
            {"h": stored[0].report_hash, "i": stored[2].report_id},
        )
    res = verify_stored_report(engine, stored[2].report_id, public_key=master)
    assert not res.valid and not res.chain_valid
    assert any("differs from the signed report" in p for p in res.problems), res.problems
    assert not verify_chain(engine, master).valid


def test_truncated_tail_detected_with_expected_head(engine, master):
    stored = [issue_report(engine, data=findings(), master=master) for _ in range(2)]
    head = verify_chain(engine, master).head_hash
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM report WHERE id = :i"), {"i": stored[1].report_id})
    assert verify_chain(engine, master).valid  # a shorter chain is consistent on its own ...
    res = verify_chain(engine, master, expected_head=head)  # ... but not with the published head
    assert not res.valid and any("expected" in p for p in res.problems)


def test_rotation_old_reports_verify_with_all_versions(engine, key_file):
    master = MasterSecret.load(path=key_file)
    old = issue_report(engine, data=findings(), master=master)
    master.rotate()
    new = issue_report(engine, data=findings(), master=master)
    assert new.key_id == master.key_id(2) != old.key_id
    assert verify_chain(engine, master).valid
    only_current = verify_stored_report(engine, old.report_id, public_key=master.signing_public_key())
    assert not only_current.valid


def test_store_report_refuses_stale_head(engine, master):
    a = sign_report(build_report(findings()), master)
    b = sign_report(build_report(findings()), master)  # built against the same (empty) head
    rid = store_report(engine, envelope=a, investigation_id=None, verdict="detected")
    assert load_report(engine, rid).verdict == "detected"
    with pytest.raises(ChainConflict, match="does not extend the chain"):
        store_report(engine, envelope=b, investigation_id=None, verdict="detected")
    nxt = build_report(findings(), sequence=2, prev_report_hash=load_report(engine, rid).report_hash)
    nxt_env = sign_report(nxt, master)
    with pytest.raises(ReportError, match="differs from the signed report"):  # columns copy signed values
        store_report(engine, envelope=nxt_env, verdict="not_detected")
    store_report(engine, envelope=nxt_env)
    assert verify_chain(engine, master).valid


def test_investigation_link(engine, master):
    from tracemark.forensics.ledger import records
    from tracemark.forensics.ledger.db import session_scope

    with session_scope(engine) as s:
        inv = records.create_investigation(s, suspect="hf:/m").id
    stored = issue_report(engine, data=findings(verdict="not_detected"), master=master, investigation_id=inv)
    assert stored.investigation_id == inv and stored.verdict == "not_detected"
    assert stored.report["investigation_id"] == inv  # signed into the report, the column is a copy
    with engine.begin() as conn:
        conn.execute(text("UPDATE report SET investigation_id = NULL WHERE id = :i"), {"i": stored.report_id})
    assert load_report(engine, stored.report_id).investigation_id == inv
    result = verify_chain(engine, master)
    assert not result.valid and any("investigation_id column" in p for p in result.problems)


def test_concurrent_writers_cannot_fork_the_chain(engine, master):
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                issue_report(engine, data=findings(), master=master)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    chain = verify_chain(engine, master)
    assert chain.valid and chain.reports_checked == 20


_ISSUER = textwrap.dedent(
    """
    import sys
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.forensics.reports import issue_report
    engine = make_engine(sys.argv[1])
    master = MasterSecret.load(path=sys.argv[2], create=False)
    for i in range(6):
        issue_report(engine, data={"decision": {"verdict": "inconclusive"}, "i": i}, master=master)
    """
)


def test_two_processes_append_to_one_chain(ledger_url, key_file, master, tmp_path):
    script = tmp_path / "issue.py"
    script.write_text(_ISSUER)
    procs = [subprocess.Popen([sys.executable, str(script), ledger_url, str(key_file)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    engine = make_engine(ledger_url)
    chain = verify_chain(engine, master)
    assert chain.valid and chain.reports_checked == 12, chain.problems
    engine.dispose()


def test_malformed_envelopes_give_clear_problems(master):
    for env, needle in [
        ("not json", "not valid JSON"),
        ({"payload": "x"}, "no 'payloadType'"),
        ({"payload": "%%%", "payloadType": PAYLOAD_TYPE, "signatures": [{"sig": "AA=="}]}, "base64"),
        ({"payload": "e30=", "payloadType": PAYLOAD_TYPE, "signatures": []}, "no signatures"),
    ]:
        res = verify_envelope(env, public_key=master)
        assert not res.valid and any(needle in p for p in res.problems), (env, res.problems)
    env = sign_report(build_report(findings()), master)
    res = verify_envelope({**env, "payloadType": "text/plain"}, public_key=master)
    assert not res.valid and any("payloadType" in p for p in res.problems)
    assert decode_report(env)["decision"]["verdict"] == "detected"


def test_unreadable_envelope_is_listed_as_unreadable_not_from_its_columns(engine, master):
    stored = issue_report(engine, data=findings(), master=master)
    with engine.begin() as conn:
        conn.execute(text("UPDATE report SET envelope_json = '{}' WHERE id = :i"), {"i": stored.report_id})
    (shown,) = list_reports(engine)
    assert shown.verdict == "unreadable" and not shown.readable and shown.created_at == ""
    assert not verify_chain(engine, master).valid
