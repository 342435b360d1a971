"""`tracemark demo`: the main job end to end on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tracemark.experiments.demo_settings import DEFAULT, QUICK

console = Console(width=130)


def demo_command(
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller run (about 3 minutes on 2 CPU cores).")
    ] = False,
    out: Annotated[
        Path, typer.Option(help="Work folder (replaced on each run): ledger, students, reports.")
    ] = Path("results/demo"),
    seed: Annotated[int, typer.Option(help="Seed for problems and training.")] = 0,
) -> None:
    """Protect, distill, investigate, report — through real gRPC on localhost.

    Starts a server with a fresh ledger, master key and 20 accounts; the 'distiller' account harvests
    protected traces (restructure → watermark) for generated word problems, plus a few from a replica
    serving the embedded SmolLM2 teacher, decoded with the distributional channel; the other accounts send
    their own traffic; a student is distilled from the harvest and a control student from the original traces;
    both are investigated against every account with the exact rank test (pre-registered in the
    transparency log); signed reports are written and verified. Exit 0 when both verdicts are
    right (distiller detected and attributed, control not detected), 1 otherwise.
    """
    from tracemark.experiments.scenario import run_demo  # deferred: imports torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    size = QUICK if quick else DEFAULT
    err = Console(stderr=True)
    result = run_demo(size, workdir=out, seed=seed, console=err)
    table = Table(title="tracemark demo: verdicts")
    for column in (
        "student",
        "trained on",
        "verdict",
        "p-value",
        "attributed to",
        "expected",
        "report valid",
        "provider p",
        "channel p",
    ):
        table.add_column(column)
    for v in result.verdicts:
        ok = "[green]" if v.correct else "[red]"
        table.add_row(
            v.student,
            v.trained_on,
            f"{ok}{v.verdict}",
            f"{v.p_value:.3g}",
            v.attributed_account or "-",
            v.expected,
            str(v.report_valid),
            f"{v.provider_p:.3g}",
            f"{v.channel_p:.3g}",
        )
    console.print(table)
    console.print(
        f"traces harvested: {result.traces} (watermarked: {result.watermarked_traces}, answers preserved: "
        f"{result.answers_preserved}/{result.traces}); total {result.seconds:.0f} s"
    )
    if result.channel_in_harvest:
        shares = ", ".join(
            f"{k} key {c['green']}/{c['n']} green tuples (p = {c['p_value']:.2g})"
            for k, c in result.channel_in_harvest.items()
        )
        console.print(
            f"model replica traces in the harvest: {result.model_traces}; channel in them: {shares}; "
            "provider p / channel p: the investigation's channel tests of each student"
        )
    for v in result.verdicts:
        console.print(f"report {v.report_id} ({v.student}): {v.report_html}")
    console.print(f"ledger: {out / 'ledger.db'}  summary: {out / 'demo.json'}")
    if result.correct:
        console.print("[bold green]The demo reached the correct verdicts.[/bold green]")
    else:
        console.print(
            "[bold red]The demo did NOT reach the correct verdicts[/bold red] (see the table above)."
        )
        raise typer.Exit(1)
