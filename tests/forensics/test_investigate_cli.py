"""`tracemark investigate` command function (mounted here on a bare Typer app); `tracemark calibrate` is
tested in test_calibrate_cli.py."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner


@pytest.fixture
def app():
    from tracemark.cli.investigate import investigate_command

    a = typer.Typer()
    a.command("investigate")(investigate_command)
    a.command("noop")(lambda: None)  # two commands keep typer from collapsing to a single-command app
    return a


@pytest.fixture
def ledger_setup(tmp_path, clean_key_env):
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.forensics.scheme import SignatureScheme

    key = tmp_path / "master.key"
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    master = MasterSecret.load(path=key)
    engine = make_engine(url)
    issuer = SignatureIssuer(
        master=master, engine=engine, scheme=SignatureScheme(digits=4, contexts=("{trigger}",))
    )
    for a in ("alice", "bob"):
        for p in issuer.pairs_for(a):
            issuer.record_issue(account=a, trace_id=f"t-{a}-{p.index}", pair=p, rewriter="watermark")
    engine.dispose()
    return {"key": key, "url": url}


def _runner():
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # newer click: stderr is always separate
        return CliRunner()


def test_investigate_prints_a_verdict_table_and_exits_zero(app, ledger_setup, tiny_model_dir, tmp_path):
    out_json = tmp_path / "out.json"
    res = _runner().invoke(
        app,
        [
            "investigate",
            "--suspect",
            f"hf:{tiny_model_dir}",
            "--ledger",
            ledger_setup["url"],
            "--key-file",
            str(ledger_setup["key"]),
            "--json",
            str(out_json),
        ],
    )
    assert res.exit_code == 0, res.output + (res.stderr or "")
    assert "NOT_DETECTED" in res.stdout and "alice" in res.stdout and "bob" in res.stdout
    flat = " ".join(res.stdout.split())  # rich wraps long lines
    assert "report: tmr-" in flat and "pre-registered as transparency-log entry #" in flat
    data = json.loads(out_json.read_text())
    assert data[0]["verdict"] == "not_detected" and data[0]["report_id"].startswith("tmr-")
    assert {a["account"] for a in data[0]["accounts"]} == {"alice", "bob"}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--suspect", "ftp:x"], "unknown suspect kind"),
        (["--suspect", "hf:/nope", "--alpha", "2"], "--alpha must be in (0, 1)"),
        (["--suspect", "hf:/nope", "--mode", "grey"], "--mode must be one of"),
        (["--suspect", "hf:/nope", "--correction", "x"], "--correction must be holm or fdr_bh"),
        (["--suspect", "hf:/nope"], "no model folder"),
        (["--suspect", "hf:/nope", "--seed", "4"], "No such option: --seed"),
        (["--suspect", "hf:/nope", "--pairs-per-account", "1"], "No such option: --pairs-per-account"),
    ],
)
def test_investigate_bad_input_is_one_line_exit_2(app, args, fragment):
    res = _runner().invoke(app, ["investigate", *args])
    assert res.exit_code == 2
    err = res.stderr.strip()
    if fragment.startswith("No such option"):  # click's own usage error, also exit 2
        assert fragment in err
        return
    assert fragment in err and len(err.splitlines()) == 1 and err.startswith("tracemark: error:")


def test_investigate_ghost_account_is_exit_2(app, ledger_setup, tiny_model_dir):
    res = _runner().invoke(
        app,
        [
            "investigate",
            "--suspect",
            f"hf:{tiny_model_dir}",
            "--ledger",
            ledger_setup["url"],
            "--key-file",
            str(ledger_setup["key"]),
            "--account",
            "ghost",
        ],
    )
    assert res.exit_code == 2 and "'ghost' cannot be investigated" in res.stderr


def test_investigate_without_master_key_is_exit_2(app, tmp_path, tiny_model_dir, clean_key_env):
    res = _runner().invoke(
        app,
        [
            "investigate",
            "--suspect",
            f"hf:{tiny_model_dir}",
            "--key-file",
            str(tmp_path / "missing.key"),
            "--ledger",
            f"sqlite:///{tmp_path / 'l.db'}",
        ],
    )
    assert res.exit_code == 2 and "no master secret" in res.stderr


def test_investigate_shows_the_channel_tests(app, tmp_path, clean_key_env, tiny_model_dir):
    from tracemark.forensics.issuer import SignatureIssuer
    from tracemark.forensics.keys import MasterSecret
    from tracemark.forensics.ledger.db import make_engine
    from tracemark.forensics.scheme import SignatureScheme
    from tracemark.foundation.channel import ChannelSpec, tokenizer_fingerprint
    from transformers import AutoTokenizer

    key, url = tmp_path / "master.key", f"sqlite:///{tmp_path / 'ledger.db'}"
    master, engine = MasterSecret.load(path=key), make_engine(url)
    spec = ChannelSpec(tokenizer=tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir)))
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4, channel=spec))
    issuer.ensure_channel_account("carol")
    engine.dispose()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 + 3?\n\nName a colour.\n")
    out_json = tmp_path / "out.json"
    args = ["investigate", "--suspect", f"hf:{tiny_model_dir}", "--ledger", url, "--key-file", str(key)]
    args += ["--channel-prompts", str(prompts), "--channel-tokens", "24", "--json", str(out_json)]
    res = _runner().invoke(app, args, env={"COLUMNS": "220"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())  # rich wraps table titles to the table's width
    assert "channel test (white-box" in text and "provider@v1" in text
    assert "account:carol@v1" in text and "provider key: not detected" in text
    assert "decoy-key check: 400 decoys" in text and "channel p" in text
    (data,) = json.loads(out_json.read_text())
    assert data["distilled_from_us"] is False and data["provider"]["verdict"] == "not_detected"
    assert master.channel_key(None).secret.hex() not in res.stdout + out_json.read_text()
    bad = _runner().invoke(app, [*args[:7], "--channel-tokenizer", str(tmp_path / "missing")])
    assert bad.exit_code == 2
