"""`tracemark log` through typer's CliRunner: checkpoint, verify (exit codes, tampering, offline export),
export, receipt, verify-receipt, show, bad input."""

from __future__ import annotations

import json

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from tracemark.cli.log import log_app
from tracemark.forensics import tlog
from tracemark.forensics.ledger.db import session_scope
from tracemark.forensics.reports.canonical import canonical_json
from tracemark.forensics.reports.dsse import sign_envelope
from typer.testing import CliRunner

runner = CliRunner()
SCHEME = {"digits": 6, "pairs_per_account": 2}


@pytest.fixture
def app():
    root = typer.Typer()
    root.add_typer(log_app, name="log")
    return root


@pytest.fixture
def logged(engine, master, key_file, ledger_url, tmp_path):
    """Two accounts' key commitments and a note; the PEM in a file; the CLI options."""
    for account in ("acme", "beta"):
        tlog.ensure_key_commitment(engine, master=master, account=account, key_version=1, scheme=SCHEME)
    tlog.append_entry(engine, kind="note", subject="note:1", body={"text": "hello"})
    pem = tmp_path / "pub.pem"
    pem.write_text(master.signing_public_key_pem())
    return {"opts": ["--ledger", ledger_url, "--key-file", str(key_file)], "pem": str(pem)}


def one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("tracemark: error:") and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_checkpoint_prints_or_writes_the_envelope(app, logged, engine, tmp_path):
    res = runner.invoke(app, ["log", "checkpoint", *logged["opts"]])
    assert res.exit_code == 0, res.output
    payload = tlog.decode_checkpoint(json.loads(res.stdout))
    assert (payload["size"], payload["head"]) == tlog.log_head(engine)
    out = tmp_path / "cp.json"
    res = runner.invoke(app, ["log", "checkpoint", *logged["opts"], "-o", str(out)])
    assert res.exit_code == 0 and "checkpoint of 3 entries" in res.stderr
    assert json.loads(out.read_text()) == tlog.latest_checkpoint(engine)


def test_checkpoint_of_an_empty_log_and_bad_options(app, engine, key_file, ledger_url, tmp_path):
    one_line_error(
        runner.invoke(app, ["log", "checkpoint", "--ledger", ledger_url, "--key-file", str(key_file)]),
        "empty",
    )
    missing_key = ["--ledger", ledger_url, "--key-file", str(tmp_path / "none.key")]
    one_line_error(runner.invoke(app, ["log", "checkpoint", *missing_key]), "no master secret")
    one_line_error(
        runner.invoke(app, ["log", "show", "--ledger", f"sqlite:///{tmp_path / 'x' / 'no.db'}"]), "no ledger"
    )


def test_verify_the_ledger(app, logged, engine):
    runner.invoke(app, ["log", "checkpoint", *logged["opts"]])
    res = runner.invoke(app, ["log", "verify", *logged["opts"]])
    assert res.exit_code == 0 and "VALID" in res.stdout and "3 entries" in res.stdout, res.output
    tlog.append_entry(engine, kind="note", body={"late": 1})
    res = runner.invoke(app, ["log", "verify", *logged["opts"], "--public-key", logged["pem"]])
    assert res.exit_code == 0 and "entries 4..4 are not covered" in res.stdout
    res = runner.invoke(app, ["log", "verify", *logged["opts"], "--json"])
    assert json.loads(res.stdout)["valid"] is True


@pytest.mark.parametrize(
    "sql, params, message",
    [
        (
            "UPDATE log_entry SET body_json = :v WHERE seq = 2",
            {"v": '{"account":"evil"}'},
            "entry #2: entry_hash",
        ),
        ("UPDATE log_entry SET prev_hash = :v WHERE seq = 3", {"v": "ab" * 32}, "entry #3: prev_hash"),
        ("DELETE FROM log_entry WHERE seq = 2", {}, "position 2 holds entry #3"),
        ("UPDATE log_entry SET seq = seq + 10 WHERE seq = 1", {}, "position 1 holds entry #2"),  # reordered
        ("UPDATE log_checkpoint SET envelope_json = :v", None, "checkpoint 1:"),  # forged (another key)
    ],
)
def test_verify_finds_tampering_in_the_ledger(app, logged, engine, master, sql, params, message):
    tlog.sign_checkpoint(engine, master)
    if params is None:  # a checkpoint signed by a key the verifier does not trust
        head = tlog.log_head(engine)
        forged = tlog.decode_checkpoint(tlog.latest_checkpoint(engine)) | {"size": head[0], "head": head[1]}
        envelope = sign_envelope(
            canonical_json(forged), Ed25519PrivateKey.generate(), payload_type=tlog.CHECKPOINT_PAYLOAD_TYPE
        )
        params = {"v": json.dumps(envelope)}
    with session_scope(engine) as s:
        s.execute(text(sql), params)
    res = runner.invoke(app, ["log", "verify", *logged["opts"]])
    assert res.exit_code == 1, res.output
    assert "INVALID" in res.stdout and message in res.stdout, res.stdout


def test_export_verifies_offline_and_tampered_export_fails(app, logged, engine, tmp_path):
    out = tmp_path / "export.json"
    res = runner.invoke(app, ["log", "export", *logged["opts"], "-o", str(out)])
    assert res.exit_code == 0 and "3 entries, 1 checkpoints" in res.stderr, res.output  # signed one first
    res = runner.invoke(app, ["log", "verify", "--export", str(out), "--public-key", logged["pem"]])
    assert res.exit_code == 0 and "a signed checkpoint covers entries 1..3" in res.stdout, res.output
    data = json.loads(out.read_text())
    data["entries"][0]["body"]["commitment"] = "0" * 64
    out.write_text(json.dumps(data))
    res = runner.invoke(app, ["log", "verify", "--export", str(out), "--public-key", logged["pem"]])
    assert res.exit_code == 1 and "entry #1: entry_hash does not match" in res.stdout
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert runner.invoke(app, ["log", "export", *logged["opts"], "-o", str(out)]).exit_code == 0
    res = runner.invoke(app, ["log", "verify", "--export", str(out), "--public-key", str(other)])
    assert res.exit_code == 1 and "wrong public key" in res.stdout


def test_verify_bad_input_exits_2(app, logged, tmp_path):
    one_line_error(
        runner.invoke(app, ["log", "verify", "--export", str(tmp_path / "x.json")]), "needs --public-key"
    )
    missing = ["log", "verify", "--export", str(tmp_path / "x.json"), "--public-key", logged["pem"]]
    one_line_error(runner.invoke(app, missing), "cannot read")
    (tmp_path / "junk.json").write_text("{not json")
    junk = ["log", "verify", "--export", str(tmp_path / "junk.json"), "--public-key", logged["pem"]]
    one_line_error(runner.invoke(app, junk), "not a JSON file")
    (tmp_path / "huge.json").write_text('{"format": ' + "9" * 5000 + "}")
    huge = ["log", "verify", "--export", str(tmp_path / "huge.json"), "--public-key", logged["pem"]]
    one_line_error(runner.invoke(app, huge), "not a JSON file")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    other = ["log", "verify", "--export", str(tmp_path / "other.json"), "--public-key", logged["pem"]]
    one_line_error(runner.invoke(app, other), "not a log export")
    (tmp_path / "bad.pem").write_text("nope")
    bad_key = ["log", "verify", *logged["opts"], "--public-key", str(tmp_path / "bad.pem")]
    one_line_error(runner.invoke(app, bad_key), "not a PEM public key")


def test_receipt_and_verify_receipt(app, logged, master, tmp_path):
    out = tmp_path / "receipt.json"
    res = runner.invoke(app, ["log", "receipt", "acme", *logged["opts"], "-o", str(out)])
    assert res.exit_code == 0 and "1 commitment(s)" in res.stderr, res.output
    text_ = out.read_text()
    assert master.account_key("acme", version=1).hex() not in text_ and "beta" not in text_
    res = runner.invoke(app, ["log", "verify-receipt", str(out), "--public-key", logged["pem"]])
    assert res.exit_code == 0 and "VALID" in res.stdout, res.output
    assert "acme  key version 1" in res.stdout
    data = json.loads(text_)
    data["account"] = "beta"
    out.write_text(json.dumps(data))
    res = runner.invoke(app, ["log", "verify-receipt", str(out), "--public-key", logged["pem"]])
    assert res.exit_code == 1 and "another account's key" in res.stdout
    one_line_error(runner.invoke(app, ["log", "receipt", "nobody", *logged["opts"]]), "no key commitment")
    res = runner.invoke(app, ["log", "receipt", "acme", *logged["opts"]])
    assert json.loads(res.stdout)["format"] == tlog.RECEIPT_FORMAT


def test_show(app, logged, ledger_url):
    res = runner.invoke(app, ["log", "show", "--ledger", ledger_url])
    assert res.exit_code == 0 and "account-key:acme:1" in res.stdout and "note:1" in res.stdout
    res = runner.invoke(app, ["log", "show", "--ledger", ledger_url, "--kind", "account-key", "--json"])
    assert [e["subject"] for e in json.loads(res.stdout)] == ["account-key:acme:1", "account-key:beta:1"]
    res = runner.invoke(app, ["log", "show", "--ledger", ledger_url, "--subject-prefix", "note:", "--json"])
    assert [e["seq"] for e in json.loads(res.stdout)] == [3]
    res = runner.invoke(app, ["log", "show", "--ledger", ledger_url, "--kind", "nothing"])
    assert res.exit_code == 0 and "no log entries" in res.stdout
