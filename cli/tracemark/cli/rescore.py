"""`tracemark rescore`: re-derive a report's result for one account from a disclosure bundle (third party)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tracemark.cli.keys import read_public_keys
from tracemark.forensics.adapters import SPEC_HELP, SuspectError, SuspectSpecError, parse_suspect
from tracemark.forensics.rederive import RescoreResult, rescore
from tracemark.foundation.console import fail
from tracemark.foundation.errors import InvalidInput, first_line


def _read_bundle(path: Path) -> object:
    try:
        return json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read bundle {path}: {exc.strerror}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        fail(f"{path} is not a JSON disclosure bundle")


def _print(result: RescoreResult) -> None:
    console = Console(highlight=False)
    console.print(f"[bold]Re-derivation of report {result.report_id}, account {result.account}[/bold]")
    for line in result.checks:
        console.print(f"  ok  {line}", markup=False)
    if result.pairs:
        table = Table("pair id", "version", "index", "report rank / N", "re-scored rank / N", "equal")
        for r in result.pairs:
            table.add_row(
                r.pair_id,
                str(r.key_version),
                str(r.index),
                f"{r.rank_report} / {r.n_report}",
                f"{r.rank_rescored} / {r.n_rescored}",
                "yes" if r.matches else "NO",
            )
        console.print(table)
    if result.p_value_rescored is not None:
        console.print(
            f"combined p-value: report {result.p_value_report!r}, re-computed {result.p_value_rescored!r}"
        )
    if result.channel:
        table = Table("channel key", "report green / n", "re-scored green / n", "report p", "re-scored p")
        for c in result.channel:
            table.add_row(
                str(c["key"]),
                f"{c['green_report']} / {c['n_report']}",
                f"{c['green_rescored']} / {c['n_rescored']}",
                f"{c['p_value_report']!r}",
                f"{c['p_value_rescored']!r}",
            )
        console.print(table)
    if result.anytime_p_value_rescored is not None:
        console.print(
            f"anytime p-value:  report {result.anytime_p_value_report!r}, "
            f"re-computed {result.anytime_p_value_rescored!r}"
        )
    if result.adjusted_p_value_rescored is not None:
        console.print(
            f"adjusted p-value: report {result.adjusted_p_value_report!r}, "
            f"re-computed {result.adjusted_p_value_rescored!r}"
        )
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)
    if result.matches:
        console.print("[bold green]REPRODUCED[/bold green]  every rank and p-value equals the report's")
        return
    console.print("[bold red]NOT REPRODUCED[/bold red]")
    for p in result.problems:
        console.print(f"  - {p}", markup=False)


def rescore_command(
    bundle: Annotated[
        Path,
        typer.Argument(
            help="The disclosure bundle JSON (from `tracemark report reveal`).", show_default=False
        ),
    ],
    suspect: Annotated[
        str,
        typer.Option(
            "--suspect",
            help=f"The investigated model: {SPEC_HELP} (white-box reports need a local hf:/gguf: model).",
            show_default=False,
        ),
    ],
    public_key: Annotated[
        list[Path],
        typer.Option(
            "--public-key",
            help="The operator's report-signing public key PEM, obtained independently (repeatable after a "
            "key rotation).",
            show_default=False,
        ),
    ],
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the result as JSON to this file ('-': standard output).",
            show_default=False,
        ),
    ] = None,
    channel_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="Tokenizer folder of the channel (a black-box channel test re-tokenizes with it).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Re-derive an evidence report's result for one account, without the operator's master secret or
    ledger: for the accused's expert.

    You need three things: the disclosure BUNDLE the operator wrote with `tracemark report reveal
    REPORT_ID --account ACCOUNT -o bundle.json`; the model that was investigated (--suspect, e.g.
    hf:/models/suspect); and the operator's report-signing public key (--public-key, the PEM of
    `tracemark keys public-key`), obtained independently of the bundle (the bundle's own copy is not
    trusted).

    Offline, it checks that the bundle's log entries chain to a checkpoint signed by that key; that
    the report's signature verifies; that the report cites the pre-registration in the log (entry hash
    = beacon) and was logged after it; that the disclosed keys open the account's key commitments
    logged at issuance; that the pairs derived from them under the logged scheme have the registered
    public ids; and that your model's weights, tokenizer and chat-template hashes are the registered
    ones. Then it re-scores every pair the report scored for the account, exactly as the investigation
    did, and recomputes the account's combined rank p-value and its adjusted p-value (the other
    accounts' p-values come from the signed report). With the distributional channel it re-collects the
    model's tuples from the registered public prompts and seeds and re-tests the account's channel key
    (n, green, p) and the combined p-value.

    Exit code 0: reproduced exactly (every rank and p-value equal to the report's); 1: not reproduced
    (the problems are listed); 2: bad input (unreadable bundle, key or model).
    """
    keys = read_public_keys(public_key)
    data = _read_bundle(bundle)
    tokenizer = None
    if channel_tokenizer is not None:
        from transformers import AutoTokenizer  # deferred: transformers only when a tokenizer is given

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(channel_tokenizer), local_files_only=True)
        except (OSError, ValueError) as exc:
            fail(f"cannot load the channel tokenizer from {channel_tokenizer}: {first_line(exc)}")
    try:
        adapter = parse_suspect(suspect)
    except SuspectSpecError as exc:
        fail(str(exc))
    console = Console(stderr=True)
    try:
        with console.status("checking the bundle and re-scoring") as status:

            def progress(done: int, total: int) -> None:
                status.update(f"re-scored {done}/{total} pairs")

            result = rescore(data, adapter, public_key=keys, progress=progress, channel_tokenizer=tokenizer)
    except InvalidInput as exc:
        fail(first_line(exc))
    except SuspectError as exc:
        fail(first_line(exc))
    finally:
        adapter.close()
    if json_out is not None and str(json_out) == "-":
        typer.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        _print(result)
        if json_out is not None:
            try:
                Path(json_out).expanduser().write_text(
                    json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
                )
            except OSError as exc:
                fail(f"cannot write {json_out}: {exc.strerror}")
    raise typer.Exit(0 if result.matches else 1)


def unwrap_help(doc: str | None) -> str:
    """``doc`` with each paragraph on one line (the rich help keeps a docstring's single line breaks)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc or "").split("\n\n"))


rescore_command.__doc__ = unwrap_help(rescore_command.__doc__)
