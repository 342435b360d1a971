"""`tracemark keys export-channel`: the channel keys a decoder on another host needs (e.g. vLLM).

Registered on the ``keys`` group: ``keys_app.command("export-channel")(export_channel_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from tracemark.forensics.channel_keys import (
    ChannelKeyFile,
    ChannelKeyFileError,
    export_channel_keys,
    write_channel_key_file,
)
from tracemark.forensics.keys import MasterKeyError, MasterSecret
from tracemark.foundation.channel import ChannelError, ChannelSpec, tokenizer_fingerprint
from tracemark.foundation.console import fail
from tracemark.foundation.errors import first_line
from tracemark.server.auth import TokenStore, TokenStoreError
from tracemark.server.config import ConfigError, load_settings


def _accounts(names: list[str], accounts_file: Path | None, tokens_file: Path | None) -> list[str]:
    found = [n.strip() for n in names if n.strip()]
    if accounts_file is not None:
        try:
            lines = accounts_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            fail(f"cannot read {accounts_file}: {exc.strerror}")
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if tokens_file is not None:
        try:
            store = TokenStore.load(tokens_file)
        except TokenStoreError as exc:
            fail(first_line(exc))
        found += [name for name in store.accounts if store.role_of(name) == "customer"]
    return sorted(set(found))


def _tokenizer_fingerprint(folder: str) -> str:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        fail(f"cannot load tokenizer {folder}: {first_line(exc)}")
    return tokenizer_fingerprint(tokenizer)


def export_channel_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Channel key file to write (mode 0600).")],
    account: Annotated[
        list[str] | None, typer.Option("--account", "-a", help="Account to include (repeatable).")
    ] = None,
    accounts_file: Annotated[
        Path | None, typer.Option(help="File of account names to include, one a line.")
    ] = None,
    tokens_file: Annotated[
        Path | None, typer.Option(help="Include every customer account of this tokens file.")
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer folder of the decoder's model (the channel's vocabulary; default: the config's "
            "channel.tokenizer). The decoder refuses a model with another vocabulary."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Server config (its channel section).")
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="Master secret file (default: the ledger's, as `tracemark serve`)."),
    ] = None,
    version: Annotated[
        int | None, typer.Option(help="Master key version (default: the current one).")
    ] = None,
) -> None:
    """Export the distributional channel's keys for a decoder that must not hold the master secret.

    Writes the channel spec (from the config's channel section and the tokenizer's fingerprint), the
    provider channel key and the listed accounts' channel keys: the same keys `tracemark serve` derives.
    The file reveals the green lists of these keys and nothing else (no signature pairs, no report
    signing key). Re-export with new accounts at any time: the vLLM processor reloads the file.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(first_line(exc))
    c = settings.channel
    if not c.enabled:
        fail("the channel is off in this config (channel.enabled = false): nothing to export")
    folder = tokenizer or c.tokenizer
    if not folder:
        fail("--tokenizer is required (the decoder model's tokenizer folder) unless channel.tokenizer is set")
    try:
        spec = ChannelSpec(
            gamma=c.gamma,
            provider_delta=c.provider_delta,
            account_delta=c.account_delta,
            context_width=c.context_width,
            tokenizer=_tokenizer_fingerprint(folder),
        )
    except ChannelError as exc:
        fail(first_line(exc))
    names = _accounts(account or [], accounts_file, tokens_file)
    try:
        master = MasterSecret.load(path=key_file or settings.ledger.master_key_file, create=False)
        text = export_channel_keys(master, spec, names, version=version)
        write_channel_key_file(out, text)
        exported = ChannelKeyFile(out)  # read back: the file the decoder will load
    except (MasterKeyError, ChannelKeyFileError, OSError) as exc:
        fail(first_line(exc))
    summary = {
        "path": str(out),
        "version": exported.version,
        "fingerprint": exported.fingerprint,
        "accounts": len(exported.accounts),
        "spec": exported.spec.as_dict(),
    }
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))
