"""CLI pieces mounted by ``tracemark.cli.main``: ``tracemark rewrite`` and ``tracemark plugins list|check``.

Exit codes: 0 success; 1 a rewriter failed with ``--on-error raise`` or ``plugins check`` found broken
plugins; 2 bad input (one line on stderr).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterKeyError, MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.foundation.console import fail, read_stdin_or_fail
from tracemark.foundation.errors import first_line
from tracemark.plugins.api import LLMBackend, RewriteContext
from tracemark.plugins.errors import (
    InvalidRewriterOptions,
    PluginError,
    RewriterFailed,
    RewriterTimeout,
    UnknownRewriterError,
)
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline
from tracemark.server.config import TeacherSection
from tracemark.server.llm import DirectLLM
from tracemark.server.teacher.factory import build_teacher


def parse_options_json(raw: str | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """``--options``: ``{"name": {...}, ...}``, or for a one-rewriter pipeline that rewriter's object."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRewriterOptions(f"--options is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise InvalidRewriterOptions("--options must be a JSON object")
    if value and all(k in names for k in value) and all(isinstance(v, dict) for v in value.values()):
        return value
    if len(names) == 1:
        return {names[0]: value}
    raise InvalidRewriterOptions(
        '--options for a pipeline must map rewriter names to objects, e.g. {"watermark": {"fraction": 1}}'
    )


def _issuer(key_file: Path | None, ledger: str | None, pairs_per_account: int) -> SignatureIssuer:
    try:
        master = MasterSecret.load(path=key_file, create=False)
    except MasterKeyError as exc:
        fail(first_line(exc))
    try:
        engine = make_engine(ledger or None)
        return SignatureIssuer(master=master, engine=engine, pairs_per_account=pairs_per_account)
    except Exception as exc:
        fail(f"cannot open the ledger: {first_line(exc)}")


def _llm(kind: str, model: str, endpoint: str) -> LLMBackend | None:
    if kind == "none":
        return None
    try:
        section = TeacherSection(
            backend=kind, model=model, endpoint=endpoint, quantization="none", device="cpu"
        )
        return DirectLLM(build_teacher(section))
    except Exception as exc:
        fail(f"cannot set up the LLM backend {kind!r}: {first_line(exc)}")


def rewrite_command(
    rewriter: Annotated[
        str,
        typer.Option(
            "--rewriter", "-r", help="Rewriter or comma-separated pipeline, e.g. restructure,watermark."
        ),
    ] = "restructure",
    options: Annotated[
        str | None,
        typer.Option(
            "--options",
            help='JSON options: {"name": {...}} per rewriter, or for a single rewriter just its object.',
        ),
    ] = None,
    problem: Annotated[str, typer.Option("--problem", help="The problem the trace solves.")] = "",
    account: Annotated[
        str | None,
        typer.Option("--account", help="Account whose signature the watermark embeds (none: anonymous)."),
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="Master secret file (default as in `tracemark keys`).")
    ] = None,
    ledger: Annotated[
        str | None, typer.Option("--ledger", help="Ledger URL (default: SQLite in the user data folder).")
    ] = None,
    pairs_per_account: Annotated[int, typer.Option("--pairs-per-account", min=1, max=64)] = 2,
    trace_id: Annotated[str | None, typer.Option("--trace-id", help="Trace id (default: random).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the rewriters' RNG.")] = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="Time limit per step, seconds.")
    ] = 30.0,
    retries: Annotated[int, typer.Option("--retries", min=0, max=10, help="Answer-guard retries.")] = 1,
    on_error: Annotated[
        str, typer.Option("--on-error", help="fallback (keep the step's input) or raise (exit 1).")
    ] = "fallback",
    llm: Annotated[
        str,
        typer.Option(
            "--llm", help="LLM for semantic/optimized/LLM-woven watermark: none|embedded|tiny|openai."
        ),
    ] = "none",
    llm_model: Annotated[str, typer.Option("--llm-model", help="Model name (openai) or folder.")] = "",
    llm_endpoint: Annotated[str, typer.Option("--llm-endpoint", help="OpenAI-compatible base URL.")] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable result on stdout.")
    ] = False,
) -> None:
    """Rewrite the reasoning trace on standard input; the result goes to stdout, a summary to stderr."""
    names = [n.strip() for n in rewriter.split(",") if n.strip()]
    if on_error not in ("fallback", "raise"):
        fail("--on-error must be 'fallback' or 'raise'")
    if llm not in ("none", "embedded", "tiny", "openai", "transformers"):
        fail("--llm must be one of none, embedded, tiny, openai, transformers")
    try:
        registry = RewriterRegistry.discover(strict=False)
        pipeline = RewritePipeline(registry, timeout_s=timeout, retries=retries, on_error=on_error)  # type: ignore[arg-type]
        parsed = parse_options_json(options, names)
        pipeline.prepare(names, parsed)
    except (UnknownRewriterError, InvalidRewriterOptions) as exc:
        fail(first_line(exc))
    trace = read_stdin_or_fail("trace")
    signatures = _issuer(key_file, ledger, pairs_per_account) if account and "watermark" in names else None
    context = RewriteContext(
        problem=problem,
        account=account or None,
        trace_id=trace_id or "",
        rng=random.Random(seed),
        llm=_llm(llm, llm_model, llm_endpoint),
        signatures=signatures,
    )
    try:
        result = pipeline.run(trace, names=names, options=parsed, context=context)
    except (RewriterFailed, RewriterTimeout) as exc:
        fail(first_line(exc), code=1)
    except PluginError as exc:
        fail(first_line(exc))
    if as_json:
        payload = {
            "trace_id": result.trace_id,
            "trace": result.trace,
            "original_answer": result.original_answer,
            "final_answer": result.final_answer,
            "answer_preserved": result.answer_preserved,
            "seconds": round(result.seconds, 6),
            "steps": [
                {
                    "name": s.name,
                    "version": s.version,
                    "guard": s.guard,
                    "attempts": s.attempts,
                    "seconds": round(s.seconds, 6),
                    "detail": s.detail,
                }
                for s in result.steps
            ],
        }
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    typer.echo(result.trace, nl=not result.trace.endswith("\n"))
    for step in result.steps:
        detail = f" - {step.detail}" if step.detail else ""
        typer.echo(
            f"{step.name}: {step.guard} ({step.attempts} attempt{'s' if step.attempts != 1 else ''}, "
            f"{step.seconds:.3f} s){detail}",
            err=True,
        )
    verdict = "preserved" if result.answer_preserved else "NOT preserved"
    typer.echo(f"answer: {result.original_answer} -> {result.final_answer} ({verdict})", err=True)


plugins_app = typer.Typer(
    help="Inspect the rewriter plugins registered under the tracemark.rewriters entry-point group.",
    no_args_is_help=True,
)


@plugins_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Every discovered plugin: name, status (loaded/failed/disabled), distribution, version, error."""
    records = RewriterRegistry.discover(strict=False).records
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "status": r.status,
                        "distribution": r.distribution,
                        "version": r.version,
                        "entry_point": r.entry_point,
                        "error": r.error,
                        "description": r.description,
                        "requires_llm": r.requires_llm,
                        "options_schema": r.options_schema,
                    }
                    for r in records
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    table = Table()
    for column in ("name", "status", "distribution", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("error / description", overflow="fold")
    colour = {"loaded": "green", "failed": "red", "disabled": "yellow"}
    for r in records:
        table.add_row(
            r.name,
            f"[{colour[r.status]}]{r.status}[/{colour[r.status]}]",
            r.distribution or "-",
            r.version or "-",
            f"{r.error} [{r.entry_point}]" if r.error else r.description,
        )
    Console().print(table)


@plugins_app.command("check")
def check_command() -> None:
    """Exit 0 when every discovered (not disabled) plugin loaded, 1 otherwise, with each error."""
    records = RewriterRegistry.discover(strict=False).records
    failed = [r for r in records if r.status == "failed"]
    loaded = sum(r.status == "loaded" for r in records)
    disabled = sum(r.status == "disabled" for r in records)
    for r in failed:
        typer.echo(f"FAILED {r.name} ({r.distribution or 'in-process'} {r.version}): {r.error}", err=True)
    typer.echo(f"{loaded} loaded, {len(failed)} failed, {disabled} disabled")
    if failed:
        raise typer.Exit(1)
