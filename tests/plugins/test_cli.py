"""`tracemark rewrite` and `tracemark plugins list|check` (the typer pieces the main CLI mounts)."""

from __future__ import annotations

import json

import pytest
import typer
from tracemark.cli import plugins as cli
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.plugins.api import Rewriter
from tracemark.plugins.loader import RewriterRegistry
from typer.testing import CliRunner

TRACE = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17\n"


@pytest.fixture
def app():
    app = typer.Typer()
    app.command("rewrite")(cli.rewrite_command)
    app.add_typer(cli.plugins_app, name="plugins")
    return app


@pytest.fixture
def runner(monkeypatch):
    for var in ("TRACEMARK_PLUGINS", "TRACEMARK_STRICT_PLUGINS", "TRACEMARK_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    return CliRunner()


def test_rewrite_prints_trace_and_summary(app, runner):
    result = runner.invoke(app, ["rewrite", "-r", "restructure"], input=TRACE)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "(1) 12 ⟸ 3 × 4 ▹ Tom has apples"
    assert result.stdout.rstrip().endswith("#### 17")
    assert "restructure: preserved (1 attempt" in result.stderr
    assert "answer: 17 -> 17 (preserved)" in result.stderr


def test_rewrite_json(app, runner):
    result = runner.invoke(
        app, ["rewrite", "-r", "restructure,identity", "--json", "--trace-id", "abc"], input=TRACE
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["trace_id"] == "abc" and payload["answer_preserved"] is True
    assert [s["name"] for s in payload["steps"]] == ["restructure", "identity"]
    assert payload["steps"][0]["guard"] == "preserved"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-r", "nope"], TRACE, "unknown rewriter 'nope'"),
        (["-r", "restructure", "--options", "{"], TRACE, "--options is not valid JSON"),
        (
            ["-r", "restructure", "--options", '{"style": "zigzag"}'],
            TRACE,
            "invalid options for rewriter 'restructure'",
        ),
        (
            ["-r", "restructure,identity", "--options", '{"style": "assign"}'],
            TRACE,
            "must map rewriter names",
        ),
        (["-r", "watermark,restructure"], TRACE, "must be the last step"),
        (["-r", "restructure"], "   \n", "trace on standard input is empty"),
        (["-r", "restructure", "--on-error", "explode"], TRACE, "--on-error must be"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(app, runner, args, stdin, message):
    result = runner.invoke(app, ["rewrite", *args], input=stdin)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracemark: error: ") and message in lines[0]


def test_per_rewriter_options(app, runner):
    options = json.dumps({"restructure": {"style": "assign", "numbered": False, "gloss": False}})
    result = runner.invoke(app, ["rewrite", "-r", "restructure,identity", "--options", options], input=TRACE)
    assert result.exit_code == 0 and result.stdout.splitlines()[:2] == ["12 := 3 × 4", "17 := 12+5"]


def test_watermark_with_account_uses_the_ledger(app, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEMARK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACEMARK_MASTER_KEY", raising=False)
    key_file = tmp_path / "master.key"
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    base = ["rewrite", "-r", "restructure,watermark", "--options", '{"watermark": {"fraction": 1}}']
    missing = runner.invoke(app, [*base, "--account", "acme", "--key-file", str(key_file)], input=TRACE)
    assert missing.exit_code == 2 and "tracemark keys create" in missing.stderr

    MasterSecret.create(path=key_file)
    args = [
        *base,
        "--account",
        "acme",
        "--key-file",
        str(key_file),
        "--ledger",
        ledger,
        "--trace-id",
        "cli-1",
    ]
    result = runner.invoke(app, args, input=TRACE)
    assert result.exit_code == 0, result.stderr
    engine = make_engine(ledger)
    issuer = SignatureIssuer(master=MasterSecret.load(path=key_file), engine=engine)
    assert sum(p.text in result.stdout for p in issuer.pairs_for("acme")) == 1
    assert sum(issuer.issued_counts("acme").values()) == 1
    engine.dispose()
    anonymous = runner.invoke(app, base, input=TRACE)
    assert anonymous.exit_code == 0 and "anonymous caller: no watermark" in anonymous.stderr


def test_plugins_list_and_check(app, runner):
    listing = runner.invoke(app, ["plugins", "list", "--json"])
    assert listing.exit_code == 0
    names = {item["name"]: item for item in json.loads(listing.stdout)}
    assert {"identity", "restructure", "watermark", "semantic", "optimized"} <= set(names)
    assert names["restructure"]["status"] == "loaded" and names["restructure"]["distribution"] == "tracemark"
    table = runner.invoke(app, ["plugins", "list"])
    assert table.exit_code == 0 and "restructure" in table.stdout
    check = runner.invoke(app, ["plugins", "check"])
    assert check.exit_code == 0 and " 0 failed" in check.stdout


def test_plugins_check_fails_on_a_broken_plugin(app, runner, fake_site):
    mod = fake_site.module("clibroken", "raise ImportError('missing native library')\n")
    fake_site.dist("acme-clibroken", "0.3", {"cli-broken": f"{mod}:X"})
    check = runner.invoke(app, ["plugins", "check"])
    assert check.exit_code == 1
    assert (
        "FAILED cli-broken (acme-clibroken 0.3): import failed: ImportError: missing native library"
        in check.stderr
    )
    listing = json.loads(runner.invoke(app, ["plugins", "list", "--json"]).stdout)
    assert {i["name"]: i["status"] for i in listing}["cli-broken"] == "failed"


def test_rewrite_on_error_raise_exits_1(app, runner, monkeypatch, caplog):
    class Crash(Rewriter):
        name = "crash"

        def rewrite(self, trace, context):
            raise RuntimeError("kaput")

    registry = RewriterRegistry.from_classes(Crash)
    monkeypatch.setattr(RewriterRegistry, "discover", classmethod(lambda cls, **kw: registry))
    fallback = runner.invoke(app, ["rewrite", "-r", "crash"], input=TRACE)
    assert fallback.exit_code == 0 and "crash: error" in fallback.stderr and fallback.stdout == TRACE
    strict = runner.invoke(app, ["rewrite", "-r", "crash", "--on-error", "raise"], input=TRACE)
    assert strict.exit_code == 1 and "rewriter 'crash' failed (error id " in strict.stderr
    error_id = strict.stderr.split("error id ", 1)[1][:12]  # the message itself is in the log, under the id
    assert any(error_id in r.getMessage() and "RuntimeError: kaput" in r.getMessage() for r in caplog.records)
