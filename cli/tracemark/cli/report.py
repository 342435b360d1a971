"""`tracemark report`: list, show, verify, export signed evidence reports, and reveal one account's keys."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tracemark.cli.keys import read_public_keys
from tracemark.cli.rescore import unwrap_help
from tracemark.forensics.keys import MasterKeyError, MasterSecret
from tracemark.forensics.ledger.db import LedgerError, ReportNotFound, default_ledger_url, make_engine
from tracemark.forensics.rederive import DisclosureError, DisclosureInconsistent, build_disclosure
from tracemark.forensics.reports import (
    ExportError,
    export_html,
    export_pdf,
    list_reports,
    load_report,
    verify_chain,
    verify_envelope,
    verify_stored_report,
)
from tracemark.forensics.reports.export import account_rows, format_value, summary_rows
from tracemark.forensics.tlog import LogCorrupted, LogError
from tracemark.foundation.console import fail

report_app = typer.Typer(
    help="Show, verify and export signed evidence reports (DSSE envelopes, Ed25519, hash-chained ledger).",
    no_args_is_help=True,
)

Ledger = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="Ledger URL (sqlite:///PATH or postgresql://...). Default: $TRACEMARK_LEDGER_URL, else "
        "<data dir>/ledger.db.",
        show_default=False,
    ),
]
ReportId = Annotated[
    str, typer.Argument(help="Report id, a unique prefix of one (6+ characters), or 'latest'.")
]
KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="Master secret file whose public keys (all versions) are trusted for verification.",
        show_default=False,
    ),
]
PublicKeys = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Trusted Ed25519 public key PEM (from `tracemark keys public-key`); repeatable. When given, "
        "the master secret is not used.",
        show_default=False,
    ),
]


def _open_ledger(url: str | None):
    url = url or default_ledger_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        fail(f"not a database URL: {url!r}")
    db = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and db not in (None, "", ":memory:")
        and not Path(db).expanduser().is_file()
    ):
        fail(f"no ledger at {parsed.database} (pass --ledger or set TRACEMARK_LEDGER_URL)")
    try:
        return make_engine(url)
    except LedgerError as exc:
        fail(str(exc))


def _load_stored(engine, report_id: str):
    try:
        return load_report(engine, report_id)
    except ReportNotFound as exc:
        fail(str(exc))


def _trusted(public_keys: list[Path] | None, key_file: Path | None, *, required: bool) -> Any:
    """Trusted public keys: PEM files if given, else every version of the master secret."""
    if public_keys:
        return read_public_keys(public_keys)
    try:
        return MasterSecret.load(path=key_file, create=False).public_keys()
    except MasterKeyError as exc:
        if not required:
            return None
        fail(
            f"no public key to verify with ({exc}); pass --public-key KEY.pem "
            "(from `tracemark keys public-key`) or --key-file"
        )


def _print_result(result, *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2, sort_keys=True))
        return
    console = Console(highlight=False)
    if result.valid:
        console.print(f"[bold green]VALID[/bold green]  {result.summary()[len('VALID: ') :]}")
    else:
        console.print("[bold red]INVALID[/bold red]")
        for p in result.problems:
            console.print(f"  - {p}", markup=False)
    checked = "checked" if result.chain_checked else "not checked (envelope only)"
    console.print(
        f"signature: {'ok' if result.signature_valid else 'FAILED'}   chain: "
        + (("ok" if result.chain_valid else "BROKEN") if result.chain_checked else checked)
        + (f"   reports checked: {result.reports_checked}" if result.reports_checked > 1 else "")
    )
    if result.head_hash:
        console.print(f"chain head: {result.head_hash}")


@report_app.command("list")
def list_command(ledger: Ledger = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the reports in the ledger, in chain order (every value read from the signed envelopes)."""
    rows = list_reports(_open_ledger(ledger))
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "report_id": r.report_id,
                        "seq": r.seq,
                        "created_at": r.created_at,
                        "verdict": r.verdict,
                        "report_hash": r.report_hash,
                        "key_id": r.key_id,
                        "investigation_id": r.investigation_id,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    table = Table("#", "created", "verdict", "key id")
    table.add_column("report id", no_wrap=True)
    for r in rows:
        table.add_row(str(r.seq), r.created_at[:19], r.verdict, r.key_id, r.report_id)
    Console().print(table if rows else "no reports in the ledger")


@report_app.command("show")
def show_command(
    report_id: ReportId,
    ledger: Ledger = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the signed report (decoded payload) as JSON.")
    ] = False,
    envelope: Annotated[bool, typer.Option("--envelope", help="Print the raw DSSE envelope JSON.")] = False,
) -> None:
    """Show a report's summary: verdict, p-value, attribution, suspect, chain position and hashes.

    Everything shown is read from the signed envelope; `report verify` checks the ledger's columns."""
    stored = _load_stored(_open_ledger(ledger), report_id)
    if envelope:
        typer.echo(stored.envelope_json)
        return
    report = stored.report
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))
        return
    console = Console(highlight=False)
    console.print(f"[bold]Evidence report {stored.report_id}[/bold]")
    rows = summary_rows(report, stored.envelope)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:  # plain lines: hashes and ids stay whole for copy and paste
        console.print(f"{k.ljust(width)}  {v}", markup=False, soft_wrap=True)
    accounts = account_rows(report)
    if accounts:
        acc = Table("account", "p-value", "adjusted p", "rejected", "pairs", title="Accounts tested")
        for a in accounts:
            acc.add_row(
                *(
                    format_value(a.get(c))
                    for c in ("account", "p_value", "adjusted_p_value", "rejected", "pairs")
                )
            )
        console.print(acc)
    console.print("Verify with: tracemark report verify " + stored.ledger_id)


@report_app.command("verify")
def verify_command(
    report_id: Annotated[
        str | None,
        typer.Argument(help="Report id, unique prefix or 'latest' (omit with --all or --envelope)."),
    ] = None,
    ledger: Ledger = None,
    key_file: KeyFile = None,
    public_key: PublicKeys = None,
    all_reports: Annotated[
        bool, typer.Option("--all", help="Verify every report and every link of the chain.")
    ] = False,
    envelope_file: Annotated[
        Path | None,
        typer.Option(
            "--envelope",
            help="Verify this envelope JSON file (offline, without a ledger unless --ledger is given).",
            show_default=False,
        ),
    ] = None,
    expected_head: Annotated[
        str | None,
        typer.Option(
            "--expected-head",
            help="With --all: the chain head hash you published earlier (detects removed newest reports).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check a report's Ed25519 signature and its hash-chain link to the previous report.

    Exit code 0 when valid, 1 when invalid (tampered, wrong key, broken chain), 2 on bad input.
    """
    chosen = sum(x for x in (report_id is not None, all_reports, envelope_file is not None))
    if chosen != 1:
        fail("give exactly one of: a report id, --all, or --envelope FILE")
    keys = _trusted(public_key, key_file, required=True)
    if envelope_file is not None:
        try:
            text = Path(envelope_file).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {envelope_file}: {getattr(exc, 'strerror', None) or exc}")
        engine = _open_ledger(ledger) if ledger else None
        result = verify_envelope(text, public_key=keys, engine=engine)
    elif all_reports:
        result = verify_chain(_open_ledger(ledger), keys, expected_head=expected_head)
    else:
        try:
            result = verify_stored_report(_open_ledger(ledger), report_id, public_key=keys)
        except ReportNotFound as exc:
            fail(str(exc))
    _print_result(result, as_json=as_json)
    raise typer.Exit(0 if result.valid else 1)


@report_app.command("export")
def export_command(
    report_id: ReportId,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="html | pdf | json (the DSSE envelope).")
    ] = "html",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file.", show_default=False)] = None,
    ledger: Ledger = None,
    key_file: KeyFile = None,
    public_key: PublicKeys = None,
) -> None:
    """Export a report: self-contained HTML or PDF with the null-distribution plot, or the raw envelope.

    The report is verified first when a public key is available; the result is printed in the export.
    """
    fmt = fmt.lower()
    if fmt not in ("html", "pdf", "json"):
        fail(f"unknown format {fmt!r}: use html, pdf or json")
    if out is None:
        fail("--out PATH is required")
    engine = _open_ledger(ledger)
    stored = _load_stored(engine, report_id)
    keys = _trusted(public_key, key_file, required=False)
    verification = verify_stored_report(engine, stored.ledger_id, public_key=keys) if keys else None
    try:
        if fmt == "html":
            export_html(stored.envelope, out, verification=verification)
        elif fmt == "pdf":
            export_pdf(stored.envelope, out, verification=verification)
        else:
            target = Path(out).expanduser()
            if not target.parent.is_dir():
                raise ExportError(f"folder {target.parent} does not exist")
            target.write_text(stored.envelope_json, encoding="utf-8")
    except ExportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    note = (
        "" if verification is None else ("  [verified]" if verification.valid else "  [VERIFICATION FAILED]")
    )
    typer.echo(f"wrote {out} ({fmt}, report {stored.report_id}){note}", err=True)


@report_app.command("commitment-key")
def commitment_key_command(
    report_id: ReportId,
    ledger: Ledger = None,
    key_file: KeyFile = None,
) -> None:
    """Print one report's commitment key (hex), to disclose to a court with the texts it commits to.

    The report commits to its pairs, queries and decoy sets with HMAC-SHA256 under this key; the key is
    derived from the master secret and the report's signed investigation id, so disclosing it opens this
    report's commitments only (not the master secret, not any other report's). Needs the master secret.
    """
    stored = _load_stored(_open_ledger(ledger), report_id)
    if not stored.investigation_id:
        fail(f"report {stored.report_id} names no investigation: it holds no keyed commitments")
    try:
        master = MasterSecret.load(path=key_file, create=False)
        version = stored.report.get("commitments", {}).get("key_version")
        key = master.commitment_key(
            stored.investigation_id, version=version if isinstance(version, int) else None
        )
    except MasterKeyError as exc:
        fail(str(exc))
    typer.echo(
        f"report {stored.report_id} (investigation {stored.investigation_id}) commitment key: {key.hex()}",
        err=True,
    )
    typer.echo(key.hex())


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (the bundle holds key material)."""
    target = Path(path).expanduser()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: narrow it before writing
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@report_app.command("reveal")
def reveal_command(
    report_id: ReportId,
    account: Annotated[
        str,
        typer.Option(
            "--account",
            help="The account whose keys to disclose (the accused one); it must be in the report's "
            "registration.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the bundle here (mode 0600); default: standard output.",
            show_default=False,
        ),
    ] = None,
    ledger: Ledger = None,
    key_file: KeyFile = None,
    include_provider_key: Annotated[
        bool,
        typer.Option(
            "--include-provider-key",
            help="Also disclose the provider channel key (it marks EVERY account's traces: rotate the master "
            "key with `tracemark keys rotate` before serving more traces).",
        ),
    ] = False,
) -> None:
    """Write the disclosure bundle of ONE account of a report, for a third party to re-derive its result.

    The bundle holds the signed report, the account's keys for the key versions its registered pairs use,
    and an inclusion proof (with a signed checkpoint) of the account's key commitments, the investigation's
    pre-registration and the report's log entry. It discloses that account's signature pairs and channel
    key and nothing else: never the master secret, never another account's key, and the provider channel
    key only with --include-provider-key (which forces a key rotation). The recipient runs
    `tracemark rescore BUNDLE --suspect MODEL --public-key KEY.pem`. Needs the master secret and the ledger.
    """
    engine = _open_ledger(ledger)
    try:
        master = MasterSecret.load(path=key_file, create=False)
        bundle = build_disclosure(
            engine, master, report_id=report_id, account=account, include_provider=include_provider_key
        )
    except (DisclosureError, LogError, MasterKeyError) as exc:
        fail(str(exc))
    except (DisclosureInconsistent, LogCorrupted) as exc:
        fail(str(exc), code=1)
    versions = ", ".join(str(k["key_version"]) for k in bundle["keys"])
    typer.echo(
        f"warning: this bundle discloses account {account!r}'s key material (key version(s) {versions}): "
        "whoever holds it can derive that account's signature pairs; give it only to the party re-deriving "
        f"report {bundle['report_id']}",
        err=True,
    )
    if bundle.get("provider_keys"):
        typer.echo(
            "warning: this bundle also discloses the PROVIDER channel key (it marks every account's traces): "
            "rotate the master key now (`tracemark keys rotate`) so no further trace is decoded under it",
            err=True,
        )
    text = json.dumps(bundle, indent=2, sort_keys=True)
    if out is None:
        typer.echo(text)
        return
    try:
        _write_private(out, text + "\n")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    typer.echo(f"wrote {out} (disclosure of {account!r} for report {bundle['report_id']})", err=True)


reveal_command.__doc__ = unwrap_help(reveal_command.__doc__)
