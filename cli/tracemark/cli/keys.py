"""`tracemark keys`: create, rotate and inspect the master secret (public information only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tracemark.forensics.keys import MasterKeyError, MasterSecret, load_public_key, public_key_id
from tracemark.foundation.console import fail
from tracemark.foundation.errors import first_line

keys_app = typer.Typer(
    help="Manage the server master secret: it derives every account's signature pairs and the key that "
    "signs evidence reports. Secrets are never printed.",
    no_args_is_help=True,
)

KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="Master secret file. Default: $TRACEMARK_MASTER_KEY_FILE, else <data dir>/master.key "
        "($TRACEMARK_HOME or $XDG_DATA_HOME/tracemark). $TRACEMARK_MASTER_KEY (hex) overrides files.",
        show_default=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _load(key_file: Path | None):
    try:
        return MasterSecret.load(path=key_file, create=False)
    except MasterKeyError as exc:
        fail(str(exc))


def _print_info(info: dict, *, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    console = Console()
    console.print(f"[bold]{title}[/bold]")
    console.print(f"source: {info['source']}" + (f"  ({info['path']})" if info.get("path") else ""))
    table = Table("version", "fingerprint", "created", "report signing key id")
    for v in info["versions"]:
        current = " (current)" if v["version"] == info["current_version"] else ""
        table.add_row(
            f"{v['version']}{current}", v["fingerprint"], v["created_at"] or "-", v["signing_key_id"]
        )
    console.print(table)


@keys_app.command("create")
def create_command(key_file: KeyFile = None, as_json: JsonOut = False) -> None:
    """Generate a new master secret (256 random bits, file mode 0600). Refuses to overwrite one."""
    try:
        master = MasterSecret.create(path=key_file)
    except (MasterKeyError, OSError) as exc:
        fail(first_line(exc))
    _print_info(master.public_info(), as_json=as_json, title="Created master secret")
    if not as_json:
        typer.echo("Back this file up: without it, issued signatures cannot be detected.", err=True)


@keys_app.command("rotate")
def rotate_command(key_file: KeyFile = None, as_json: JsonOut = False) -> None:
    """Add a new key version; older versions are kept.

    New traces are signed under the new version. Older versions stay in the file, so signatures issued
    under them remain detectable and reports signed with them remain verifiable.
    """
    master = _load(key_file)
    try:
        master.rotate()
    except (MasterKeyError, OSError) as exc:
        fail(first_line(exc))
    _print_info(master.public_info(), as_json=as_json, title=f"Rotated to version {master.current_version}")


@keys_app.command("show")
def show_command(key_file: KeyFile = None, as_json: JsonOut = False) -> None:
    """Show public information: versions, fingerprints, creation times, signing key ids. Never secrets."""
    _print_info(_load(key_file).public_info(), as_json=as_json, title="Master secret")


@keys_app.command("public-key")
def public_key_command(
    key_file: KeyFile = None,
    version: Annotated[
        int | None, typer.Option("--version", help="Key version (default: current).", show_default=False)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the PEM to this file instead of stdout.", show_default=False),
    ] = None,
) -> None:
    """Print the Ed25519 public key (PEM) that verifies evidence reports; give it to third parties."""
    master = _load(key_file)
    try:
        pem = master.signing_public_key_pem(version)
    except MasterKeyError as exc:
        fail(str(exc))
    if out is None:
        typer.echo(pem, nl=False)
        return
    try:
        Path(out).expanduser().write_text(pem, encoding="ascii")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    typer.echo(f"wrote {out} (key id {master.key_id(version)})", err=True)


def read_public_keys(paths: list[Path]) -> dict:
    """PEM public keys by key id; an unreadable or malformed file is a one-line error (exit 2)."""
    keys = {}
    for path in paths:
        try:
            key = load_public_key(Path(path).expanduser().read_bytes())
        except OSError as exc:
            fail(f"cannot read public key {path}: {exc.strerror}")
        except MasterKeyError as exc:
            fail(f"{path}: {exc}")
        keys[public_key_id(key)] = key
    return keys
