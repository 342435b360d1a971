"""`tracemark report` through typer's CliRunner: show, verify (exit codes), export, bad input."""

from __future__ import annotations

import base64
import json

import pytest
import typer
from sqlalchemy import text
from tracemark.cli.report import report_app
from tracemark.forensics.reports import issue_report
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def app():
    root = typer.Typer()
    root.add_typer(report_app, name="report")
    return root


@pytest.fixture
def chain(engine, master, key_file, ledger_url):
    data = {
        "suspect_identity": {"kind": "gguf", "weights_sha256": "cd" * 32},
        "decision": {"verdict": "detected", "alpha": 0.001, "p_value": 3e-8, "attributed_account": "acme"},
        "statistics": {"accounts": [{"account": "acme", "fisher_statistic": 41.0, "df": 4, "p_value": 3e-8}]},
    }
    stored = [issue_report(engine, data=data, master=master) for _ in range(3)]
    return stored, ["--ledger", ledger_url, "--key-file", str(key_file)]


def one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("tracemark: error:") and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_list_and_show(app, chain, ledger_url):
    stored, _ = chain
    res = runner.invoke(app, ["report", "list", "--ledger", ledger_url])
    assert res.exit_code == 0 and all(s.report_id in res.stdout for s in stored)
    res = runner.invoke(app, ["report", "show", stored[1].report_id, "--ledger", ledger_url])
    assert res.exit_code == 0, res.output
    assert "detected" in res.stdout and "acme" in res.stdout and stored[1].report_hash in res.stdout
    res = runner.invoke(app, ["report", "show", "latest", "--ledger", ledger_url, "--json"])
    assert json.loads(res.stdout)["report_id"] == stored[2].report_id
    res = runner.invoke(app, ["report", "show", stored[0].report_id, "--ledger", ledger_url, "--envelope"])
    assert json.loads(res.stdout)["payloadType"] == "application/vnd.tracemark.report+json"


def test_verify_valid_exits_0(app, chain):
    stored, opts = chain
    res = runner.invoke(app, ["report", "verify", stored[2].report_id, *opts])
    assert res.exit_code == 0 and "VALID" in res.stdout
    res = runner.invoke(app, ["report", "verify", "--all", *opts, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["reports_checked"] == 3


def test_verify_with_published_public_key_and_envelope_file(app, chain, master, tmp_path, ledger_url):
    stored, _ = chain
    pem = tmp_path / "pub.pem"
    pem.write_text(master.signing_public_key_pem())
    env = tmp_path / "env.json"
    env.write_text(stored[0].envelope_json)
    res = runner.invoke(app, ["report", "verify", "--envelope", str(env), "--public-key", str(pem)])
    assert res.exit_code == 0 and "chain: not checked" in res.stdout
    res = runner.invoke(
        app, ["report", "verify", "--envelope", str(env), "--public-key", str(pem), "--ledger", ledger_url]
    )
    assert res.exit_code == 0 and "chain: ok" in res.stdout
    e = json.loads(stored[0].envelope_json)
    body = bytearray(base64.b64decode(e["payload"]))
    body[10] ^= 0x20
    env.write_text(json.dumps({**e, "payload": base64.b64encode(bytes(body)).decode()}))
    res = runner.invoke(app, ["report", "verify", "--envelope", str(env), "--public-key", str(pem)])
    assert res.exit_code == 1 and "INVALID" in res.stdout and "changed after signing" in res.stdout


def test_verify_wrong_key_exits_1(app, chain, tmp_path, ledger_url):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stored, _ = chain
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    res = runner.invoke(
        app, ["report", "verify", stored[0].report_id, "--ledger", ledger_url, "--public-key", str(other)]
    )
    assert res.exit_code == 1 and "wrong public key" in res.stdout


def test_verify_broken_chain_exits_1(app, chain, engine):
    stored, opts = chain
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM report WHERE id = :i"), {"i": stored[1].report_id})
    res = runner.invoke(app, ["report", "verify", stored[2].report_id, *opts])
    assert res.exit_code == 1 and "chain broken" in res.stdout
    assert runner.invoke(app, ["report", "verify", "--all", *opts]).exit_code == 1


def test_export_formats(app, chain, tmp_path):
    stored, opts = chain
    for fmt, magic in (("html", b"<!DOCTYPE html>"), ("pdf", b"%PDF-"), ("json", b"{")):
        out = tmp_path / f"r.{fmt}"
        res = runner.invoke(
            app, ["report", "export", stored[0].report_id, "--format", fmt, "--out", str(out), *opts]
        )
        assert res.exit_code == 0, res.output
        assert out.read_bytes().startswith(magic)
        assert "[verified]" in res.stderr
    assert "VALID" in (tmp_path / "r.html").read_text()


def test_bad_input_exits_2(app, chain, tmp_path, ledger_url):
    stored, opts = chain
    one_line_error(runner.invoke(app, ["report", "show", "tmr-nope", "--ledger", ledger_url]), "no report")
    one_line_error(runner.invoke(app, ["report", "verify", "tmr-nope", *opts]), "no report")
    one_line_error(runner.invoke(app, ["report", "verify", *opts]), "exactly one")
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    one_line_error(runner.invoke(app, ["report", "show", "latest", "--ledger", missing]), "no ledger")
    assert not (tmp_path / "none.db").exists()
    one_line_error(runner.invoke(app, ["report", "show", "x", "--ledger", "bogus"]), "not a database URL")
    rid = stored[0].report_id
    one_line_error(
        runner.invoke(app, ["report", "export", rid, "--out", str(tmp_path / "no" / "r.html"), *opts]),
        "does not exist",
    )
    one_line_error(
        runner.invoke(
            app, ["report", "export", rid, "--format", "docx", "--out", str(tmp_path / "r"), *opts]
        ),
        "unknown format",
    )
    one_line_error(runner.invoke(app, ["report", "export", rid, *opts]), "--out")
    one_line_error(
        runner.invoke(
            app, ["report", "verify", rid, "--ledger", ledger_url, "--public-key", str(tmp_path / "x.pem")]
        ),
        "cannot read public key",
    )
    one_line_error(
        runner.invoke(
            app, ["report", "verify", rid, "--ledger", ledger_url, "--key-file", str(tmp_path / "k")]
        ),
        "no public key to verify with",
    )


def test_help_texts(app):
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0 and "DSSE" in res.stdout
    for cmd in ("list", "show", "verify", "export"):
        assert runner.invoke(app, ["report", cmd, "--help"]).exit_code == 0


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("verdict", "'not_detected'", "detected"),
        ("created_at", "'2020-01-01 00:00:00.000000'", None),
        ("key_id", "'ed25519:forged'", None),
    ],
)
def test_edited_column_is_not_shown_and_fails_verify_all(
    app, chain, ledger_url, engine, column, value, shown
):
    """Attack: edit an unsigned ledger column with SQL. list/show/load_report keep showing the signed value;
    `verify --all` and `verify ID` exit 1 naming the column."""
    from tracemark.forensics.reports import load_report

    stored, opts = chain
    victim = stored[1]
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE report SET {column} = {value} WHERE id = :i"), {"i": victim.report_id})
    listed = json.loads(runner.invoke(app, ["report", "list", "--ledger", ledger_url, "--json"]).stdout)
    row = next(r for r in listed if r["report_id"] == victim.report_id)
    signed = victim.report
    assert row["verdict"] == signed["decision"]["verdict"] == "detected"
    assert row["created_at"] == signed["created_at"] and row["key_id"] == victim.key_id
    if shown:
        assert load_report(engine, victim.report_id).verdict == shown  # what GetReport returns
    res = runner.invoke(app, ["report", "verify", "--all", *opts])
    assert res.exit_code == 1 and "INVALID" in res.stdout, res.stdout
    for args in (["--all"], [victim.report_id]):
        res = runner.invoke(app, ["report", "verify", *args, *opts, "--json"])
        problems = json.loads(res.stdout)["problems"]
        assert res.exit_code == 1 and any(f"ledger's {column} column" in p for p in problems), problems
