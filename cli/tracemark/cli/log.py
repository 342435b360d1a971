"""`tracemark log`: sign checkpoints of the transparency log, verify it, export it, and key receipts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tracemark.cli.report import Ledger, PublicKeys, _open_ledger, _trusted
from tracemark.forensics.keys import MasterKeyError, MasterSecret
from tracemark.forensics.tlog import (
    KeyReceiptNotFound,
    LogVerification,
    covering_checkpoint,
    decode_checkpoint,
    export_log,
    find_entries,
    key_receipt,
    log_size,
    sign_checkpoint,
    verify_export,
    verify_receipt,
    verify_stored_log,
)
from tracemark.foundation.console import fail
from tracemark.foundation.errors import InvalidInput, first_line

log_app = typer.Typer(
    help="The transparency log: an append-only, hash-chained log in the ledger with Ed25519-signed "
    "checkpoints. Every account key is committed to it before the account's first signed trace; customers "
    "verify their key receipts, anyone verifies an export offline with the public key.",
    no_args_is_help=True,
)

KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="Master secret file: it signs checkpoints, and its public keys (all versions) verify them. "
        "Default: $TRACEMARK_MASTER_KEY_FILE, else <data dir>/master.key; $TRACEMARK_MASTER_KEY overrides.",
        show_default=False,
    ),
]
Out = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write the JSON to this file instead of stdout.", show_default=False),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _master(key_file: Path | None) -> MasterSecret:
    try:
        return MasterSecret.load(path=key_file, create=False)
    except MasterKeyError as exc:
        fail(first_line(exc))


def _emit(data: dict, out: Path | None, *, what: str) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        Path(out).expanduser().write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    typer.echo(f"wrote {out} ({what})", err=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or an integer too long to parse
        fail(f"{path} is not a JSON file")


def _print_result(result: LogVerification, *, as_json: bool, total: int | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2, sort_keys=True))
        return
    console = Console(highlight=False)
    if result.valid:
        console.print(f"[bold green]VALID[/bold green]  {result.summary()[len('VALID: ') :]}", soft_wrap=True)
        size = result.size if total is None else total
        if 0 < result.signed_size < size or (size and not result.signed_size):
            console.print(
                f"note: entries {result.signed_size + 1}..{size} are not covered by a signed checkpoint yet "
                "(tracemark log checkpoint)"
            )
        return
    console.print("[bold red]INVALID[/bold red]")
    for p in result.problems:
        console.print(f"  - {p}", markup=False, soft_wrap=True)


def _verify_or_fail(check, *args) -> LogVerification:  # noqa: ANN001
    try:
        return check(*args)
    except InvalidInput as exc:
        fail(first_line(exc))


@log_app.command("checkpoint")
def checkpoint_command(ledger: Ledger = None, key_file: KeyFile = None, out: Out = None) -> None:
    """Sign the log's current size and head hash (Ed25519, DSSE) and store the checkpoint.

    Prints the checkpoint envelope JSON. Publish it: a later rewrite of the log then fails verification.

    Signing an empty log is an error (exit 2)."""
    engine = _open_ledger(ledger)
    master = _master(key_file)
    try:
        envelope = sign_checkpoint(engine, master)
    except InvalidInput as exc:
        fail(first_line(exc))
    payload = decode_checkpoint(envelope)
    _emit(envelope, out, what=f"checkpoint of {payload['size']} entries, head {payload['head'][:16]}")


@log_app.command("verify")
def verify_command(
    ledger: Ledger = None,
    key_file: KeyFile = None,
    public_key: PublicKeys = None,
    export_file: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Verify this export (from `tracemark log export`) offline, without a ledger; needs "
            "--public-key (the keys inside an export are not trusted).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Verify the log: hash links, entry hashes, checkpoint signatures and signed heads.

    Checks positions 1..n without gaps, every prev_hash link and every entry hash (from its fields).

    Each checkpoint's signature must verify and its signed head match the chain; checkpoints never shrink.

    Without --export: the ledger's log, trusting --public-key PEMs, else the master secret's public keys.

    Exit code 0 when valid, 1 when invalid (problems listed), 2 on bad input."""
    if export_file is not None:
        if not public_key:
            fail("--export needs --public-key KEY.pem (from `tracemark keys public-key`)")
        keys = _trusted(public_key, None, required=True)
        result = _verify_or_fail(verify_export, _read_json(export_file), keys)
    else:
        engine = _open_ledger(ledger)
        keys = _trusted(public_key, key_file, required=True)
        result = _verify_or_fail(verify_stored_log, engine, keys)
    _print_result(result, as_json=as_json)
    raise typer.Exit(0 if result.valid else 1)


@log_app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSON file.", show_default=False)],
    ledger: Ledger = None,
    key_file: KeyFile = None,
    checkpoint: Annotated[
        bool,
        typer.Option(
            "--checkpoint/--no-checkpoint",
            help="First sign a checkpoint when the newest one does not cover every entry (needs the master "
            "secret).",
        ),
    ] = True,
) -> None:
    """Write the whole log (entries, signed checkpoints, public key PEMs) as one JSON file.

    A third party verifies it offline: tracemark log verify --export FILE --public-key KEY.pem"""
    engine = _open_ledger(ledger)
    master = _master(key_file) if checkpoint else None
    if master is not None and log_size(engine):
        covering_checkpoint(engine, size=log_size(engine), master=master)
    data = export_log(engine, master=master)
    _emit(data, out, what=f"{len(data['entries'])} entries, {len(data['checkpoints'])} checkpoints")


@log_app.command("receipt")
def receipt_command(
    account: Annotated[str, typer.Argument(help="The account whose key receipt to build.")],
    ledger: Ledger = None,
    key_file: KeyFile = None,
    out: Out = None,
) -> None:
    """Build an account's key receipt: its key commitments and an inclusion proof to a signed checkpoint.

    One commitment per key version; a fresh checkpoint is signed when none covers them. Holds no key."""
    engine = _open_ledger(ledger)
    try:
        receipt = key_receipt(engine, account=account, master=_master(key_file))
    except (InvalidInput, KeyReceiptNotFound) as exc:
        fail(first_line(exc))
    n = len(receipt["proof"]["entries"])
    _emit(receipt, out, what=f"key receipt of {account}: {n} commitment(s)")


@log_app.command("verify-receipt")
def verify_receipt_command(
    receipt_file: Annotated[
        Path, typer.Argument(help="Receipt JSON (from `tracemark log receipt` or the API).")
    ],
    public_key: PublicKeys = None,
    key_file: KeyFile = None,
    as_json: JsonOut = False,
) -> None:
    """Verify a key receipt offline with the provider's public key (--public-key KEY.pem).

    Recomputes each commitment's entry hash and the chain up to the checkpoint's signed head.

    Checks the checkpoint's signature, and that every entry commits to the receipt's account.

    Exit code 0 when valid, 1 when invalid (problems listed), 2 on bad input."""
    receipt = _read_json(receipt_file)
    keys = _trusted(public_key, key_file, required=True)
    result = _verify_or_fail(verify_receipt, receipt, keys)
    if result.valid and not as_json:
        for e in receipt["proof"]["entries"]:
            b = e["body"]
            typer.echo(
                f"#{e['seq']}  {b['account']}  key version {b['key_version']}  fingerprint "
                f"{b.get('key_fingerprint', '-')}  commitment {b['commitment']}  logged {e['logged_at']}"
            )
    _print_result(result, as_json=as_json)
    raise typer.Exit(0 if result.valid else 1)


@log_app.command("show")
def show_command(
    ledger: Ledger = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only entries of this kind.", show_default=False)
    ] = None,
    subject_prefix: Annotated[
        str | None,
        typer.Option(
            "--subject-prefix", help="Only entries whose subject starts with this.", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
) -> None:
    """List log entries in order: position, time, kind, subject and entry hash."""
    entries = find_entries(_open_ledger(ledger), kind=kind, subject_prefix=subject_prefix)
    if as_json:
        typer.echo(json.dumps([e.as_dict() for e in entries], indent=2, sort_keys=True))
        return
    if not entries:
        Console().print("no log entries")
        return
    table = Table("#", "logged", "kind", "subject")
    table.add_column("entry hash", no_wrap=True)
    for e in entries:
        table.add_row(str(e.seq), e.logged_at[:19], e.kind, e.subject or "-", e.entry_hash[:16])
    Console().print(table)
