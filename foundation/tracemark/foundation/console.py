"""Shared CLI plumbing: one-line errors with exit code 2."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``tracemark: error: message`` on stderr and exit (2 = bad input)."""
    typer.echo(f"tracemark: error: {message}", err=True)
    raise typer.Exit(code)


def read_stdin_or_fail(what: str) -> str:
    if sys.stdin is None or sys.stdin.isatty():
        fail(f"no {what} on standard input (pipe it in, e.g. `tracemark rewrite < trace.txt`)")
    text = sys.stdin.read()
    if not text.strip():
        fail(f"{what} on standard input is empty")
    return text


def stage_progress(console: Console) -> Progress:
    """The progress display of long multi-stage jobs (demo, benchmarks): label, bar, n/m, elapsed."""
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
