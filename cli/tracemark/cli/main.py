"""Entry point of the ``tracemark`` console script."""

from __future__ import annotations

import typer
from tracemark.cli.attack import attack_app
from tracemark.cli.bench import bench_app
from tracemark.cli.channel_calibrate import calibrate_channel_command
from tracemark.cli.channel_keys import export_channel_command
from tracemark.cli.demo import demo_command
from tracemark.cli.investigate import calibrate_command, investigate_command
from tracemark.cli.keys import keys_app
from tracemark.cli.log import log_app
from tracemark.cli.optimize import optimize_app
from tracemark.cli.plugins import plugins_app, rewrite_command
from tracemark.cli.report import report_app
from tracemark.cli.rescore import rescore_command
from tracemark.cli.serve import accounts_app, generate_command, serve_command

app = typer.Typer(
    name="tracemark",
    help="Protect a reasoning model's API against unauthorized distillation: protected traces, "
    "keyed watermarks, calibrated forensics with signed evidence reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_command)
app.command("generate")(generate_command)
app.command("demo")(demo_command)
app.command("rewrite")(rewrite_command)
app.command("investigate")(investigate_command)
app.command("calibrate")(calibrate_command)
app.command("calibrate-channel")(calibrate_channel_command)
app.command("rescore")(rescore_command)
app.add_typer(plugins_app, name="plugins")
app.add_typer(accounts_app, name="accounts")
app.add_typer(bench_app, name="bench")
keys_app.command("export-channel")(export_channel_command)
app.add_typer(keys_app, name="keys")
app.add_typer(report_app, name="report")
app.add_typer(log_app, name="log")
app.add_typer(optimize_app, name="optimize")
app.add_typer(attack_app, name="attack")

if __name__ == "__main__":
    app()
