"""`tracemark calibrate-channel` (mounted on a bare Typer app): the decoy-key check on a model's own text."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner


def test_calibrate_channel_passes_on_a_clean_model(tiny_model_dir, tmp_path, one_torch_thread):
    from tracemark.cli.channel_calibrate import calibrate_channel_command

    app = typer.Typer()
    app.command("calibrate-channel")(calibrate_channel_command)
    app.command("noop")(lambda: None)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Tell me about {w}." for w in ("cats", "rain", "maps", "tea")) + "\n")
    out = tmp_path / "c.json"
    args = ["calibrate-channel", "-s", f"hf:{tiny_model_dir}", "--prompts", str(prompts), "--tokens", "48"]
    res = CliRunner().invoke(app, [*args, "--json", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["passed"] and data["decoy_keys"] == 400 and data["evidence"]["distinct_tuples"] > 50
    assert "PASS" in res.stdout
    bad = CliRunner().invoke(app, [*args, "--mode", "grey"])
    assert bad.exit_code == 2
