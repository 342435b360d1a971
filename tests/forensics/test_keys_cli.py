"""`tracemark keys` through typer's CliRunner."""

from __future__ import annotations

import json
import stat

import pytest
import typer
from tracemark.cli.keys import keys_app
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def app():
    root = typer.Typer()
    root.add_typer(keys_app, name="keys")
    return root


def _secrets(path) -> list[str]:
    return [v["secret"] for v in json.loads(path.read_text())["versions"].values()]


def test_create_show_rotate_public_key(app, key_file, tmp_path):
    res = runner.invoke(app, ["keys", "create", "--key-file", str(key_file)])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (secret,) = _secrets(key_file)
    assert secret not in res.output

    res = runner.invoke(app, ["keys", "create", "--key-file", str(key_file)])
    assert res.exit_code == 2 and "already exists" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    res = runner.invoke(app, ["keys", "show", "--key-file", str(key_file), "--json"])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["current_version"] == 1 and secret not in res.output

    res = runner.invoke(app, ["keys", "rotate", "--key-file", str(key_file)])
    assert res.exit_code == 0 and "Rotated to version 2" in res.stdout
    assert all(s not in res.output for s in _secrets(key_file))
    res = runner.invoke(app, ["keys", "show", "--key-file", str(key_file)])
    assert (
        res.exit_code == 0 and "(current)" in res.stdout and info["versions"][0]["fingerprint"] in res.stdout
    )

    res = runner.invoke(app, ["keys", "public-key", "--key-file", str(key_file), "--version", "1"])
    assert res.exit_code == 0 and res.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    out = tmp_path / "pub.pem"
    res = runner.invoke(app, ["keys", "public-key", "--key-file", str(key_file), "--out", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    res = runner.invoke(app, ["keys", "public-key", "--key-file", str(key_file), "--version", "9"])
    assert res.exit_code == 2 and "unknown key version 9" in res.stderr


def test_missing_key_is_one_line_error(app, key_file):
    for cmd in ("show", "rotate", "public-key"):
        res = runner.invoke(app, ["keys", cmd, "--key-file", str(key_file)])
        assert res.exit_code == 2, cmd
        assert res.stderr.startswith("tracemark: error: no master secret") and "keys create" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not key_file.exists()


def test_env_key_cannot_be_created_or_rotated(app, key_file, monkeypatch):
    monkeypatch.setenv("TRACEMARK_MASTER_KEY", "ab" * 32)
    assert runner.invoke(app, ["keys", "create", "--key-file", str(key_file)]).exit_code == 2
    res = runner.invoke(app, ["keys", "rotate"])
    assert res.exit_code == 2 and "cannot rotate" in res.stderr
    res = runner.invoke(app, ["keys", "show"])
    assert res.exit_code == 0 and "env:TRACEMARK_MASTER_KEY" in res.stdout and "ab" * 32 not in res.output


def test_help_texts(app):
    res = runner.invoke(app, ["keys", "--help"])
    assert res.exit_code == 0 and "never printed" in res.stdout
    for cmd in ("create", "rotate", "show", "public-key"):
        assert runner.invoke(app, ["keys", cmd, "--help"]).exit_code == 0
