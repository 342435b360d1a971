"""The disclosure bundle: what the operator hands the accused's expert to re-derive one account's result.

``tracemark report reveal REPORT_ID --account A`` writes::

    {"format": "tracemark-disclosure/1",
     "report_id": ..., "account": A,
     "report": <the signed report's DSSE envelope>,
     "keys": [{"key_version": v, "account_key": "<64 hex>"}, ...],   # A's keys, registered versions only
     "log": <inclusion proof of A's key commitments, the registration and the report's log entry,
             with a signed checkpoint>,
     "public_key_pem": <the report signer's public key: informational, never a trust anchor>}

With the distributional channel the bundle also holds ``"channel_keys": [{"key_version": v, "channel_key":
"<64 hex>"}]`` (A's channel keys, opening the ``channel_commitment`` of A's key entries). The **provider
channel key** is disclosed only with ``include_provider=True`` (``--include-provider-key``): it marks every
trace of every account, so once disclosed anyone can detect, and steer around, the channel in all of them.
Disclosing it forces a master-key rotation (``tracemark keys rotate``) before further traces are served.

It discloses A's account keys (so A's signature pairs and channel) and nothing else unless asked: never
the master secret, never another account's key. The expert checks it with the operator's public key
obtained independently (:func:`~tracemark.forensics.rederive.rescore.rescore`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine
from tracemark.forensics.ledger.db import ReportNotFound
from tracemark.forensics.reports import load_report
from tracemark.forensics.tlog import (
    ACCOUNT_KEY_KIND,
    PROVIDER_KEY_KIND,
    LogEntryNotFound,
    get_entry,
    inclusion_proof,
    key_subject,
    open_channel_commitment,
    open_key_commitment,
)
from tracemark.foundation.errors import Failed, InvalidInput

DISCLOSURE_FORMAT = "tracemark-disclosure/1"
INVESTIGATION_KIND = "tracemark-investigation"


class DisclosureError(InvalidInput):
    """A disclosure cannot be built or read as asked (unknown report, account not registered, malformed
    bundle)."""


class DisclosureInconsistent(Failed):
    """The operator's own ledger, log and master secret disagree (run ``tracemark log verify``)."""


def registered_pairs(registration_body: Mapping[str, Any], account: str) -> list[dict]:
    """The pairs a registration entry body lists for ``account`` (registration order)."""
    pairs = registration_body.get("pairs")
    if not isinstance(pairs, list):
        return []
    return [p for p in pairs if isinstance(p, Mapping) and p.get("account") == account]


def registered_channel_keys(registration_body: Mapping[str, Any], account: str) -> dict[int, int]:
    """``{key version: key entry seq}`` of ``account``'s channel keys a registration lists for testing."""
    section = registration_body.get("channel")
    rows = section.get("account_keys") if isinstance(section, Mapping) else None
    out: dict[int, int] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, Mapping) and row.get("account") == account:
            out[int(row["key_version"])] = int(row["key_entry"])
    return out


def registered_provider_keys(registration_body: Mapping[str, Any]) -> dict[int, int]:
    """``{key version: provider-key entry seq}`` a registration lists for testing."""
    section = registration_body.get("channel")
    rows = section.get("provider_keys") if isinstance(section, Mapping) else None
    return {
        int(r["key_version"]): int(r["key_entry"])
        for r in (rows if isinstance(rows, list) else [])
        if isinstance(r, Mapping)
    }


def _report_entries(engine: Engine, report_id: str) -> tuple[Any, dict, Any, Any]:
    try:
        stored = load_report(engine, report_id)
    except ReportNotFound:
        raise DisclosureError(f"no report {report_id!r} in the ledger") from None
    if not stored.readable:
        raise DisclosureInconsistent(f"report {stored.report_id} is unreadable in the ledger")
    report = stored.report
    registration = report.get("registration")
    if report.get("kind") != INVESTIGATION_KIND or not isinstance(registration, Mapping):
        raise DisclosureError(
            f"report {stored.report_id} is not a pre-registered investigation report: nothing to re-derive"
        )
    try:
        reg_entry = get_entry(engine, seq=registration.get("log_seq"))
        report_entry = get_entry(engine, subject=f"report:{stored.report_id}")
    except LogEntryNotFound as exc:
        raise DisclosureInconsistent(f"report {stored.report_id}: {exc} in the transparency log") from None
    if reg_entry.kind != "registration" or reg_entry.entry_hash != registration.get("entry_hash"):
        raise DisclosureInconsistent(
            f"report {stored.report_id}: log entry #{reg_entry.seq} is not the registration it cites"
        )
    return stored, report, reg_entry, report_entry


def build_disclosure(
    engine: Engine, master: Any, *, report_id: str, account: str, include_provider: bool = False
) -> dict:
    """The disclosure bundle of ``account`` for report ``report_id`` (module doc); ``include_provider``
    also discloses the provider channel key (forces a key rotation: see the module doc).

    ``report_id`` may be a unique prefix or ``latest``. An unknown report, a report that is not an
    investigation, or an account the report's registration does not list: :class:`DisclosureError`. A fresh
    checkpoint is signed with ``master`` when none covers the report's log entry yet.
    """
    if not isinstance(account, str) or not account.strip():
        raise DisclosureError("account must be a non-empty name")
    stored, report, reg_entry, report_entry = _report_entries(engine, report_id)
    pairs = registered_pairs(reg_entry.body, account)
    channel_versions = registered_channel_keys(reg_entry.body, account)
    if not pairs and not channel_versions:
        listed = reg_entry.body.get("accounts") or []
        raise DisclosureError(
            f"account {account!r} is not in the registration of report {stored.report_id} "
            f"(registered: {', '.join(map(str, listed)) or 'none'})"[:300]
        )
    key_entries: dict[int, int] = dict(channel_versions)
    for p in pairs:
        key_entries.setdefault(int(p["key_version"]), int(p["key_entry"]))
    keys = []
    for version, seq in sorted(key_entries.items()):
        entry = get_entry(engine, seq=seq)
        key = master.account_key(account, version=version)
        if (
            entry.kind != ACCOUNT_KEY_KIND
            or entry.subject != key_subject(account, version)
            or not open_key_commitment(entry.body, key)
        ):
            raise DisclosureInconsistent(
                f"log entry #{seq} is not the commitment to {account!r}'s key version {version} "
                "under this master secret"
            )
        keys.append({"key_version": version, "account_key": key.hex()})
    channel_keys = []
    for version, seq in sorted(channel_versions.items()):
        secret = master.channel_key(account, version=version).secret
        if not open_channel_commitment(get_entry(engine, seq=seq).body, secret, scope="account"):
            raise DisclosureInconsistent(f"log entry #{seq} does not commit to {account!r}'s channel key")
        channel_keys.append({"key_version": version, "channel_key": secret.hex()})
    provider_keys = []
    provider_seqs = registered_provider_keys(reg_entry.body) if include_provider else {}
    for version, seq in sorted(provider_seqs.items()):
        entry = get_entry(engine, seq=seq)
        secret = master.channel_key(None, version=version).secret
        opened = open_channel_commitment(entry.body, secret, scope="provider")
        if entry.kind != PROVIDER_KEY_KIND or not opened:
            raise DisclosureInconsistent(f"log entry #{seq} is not the commitment to the provider key")
        provider_keys.append({"key_version": version, "provider_key": secret.hex()})
    seqs = sorted({*key_entries.values(), *provider_seqs.values(), reg_entry.seq, report_entry.seq})
    proof = inclusion_proof(engine, seqs=seqs, master=master)
    signer = {master.key_id(v): v for v in master.versions}.get(stored.key_id)
    return {
        "format": DISCLOSURE_FORMAT,
        "report_id": stored.report_id,
        "investigation_id": stored.investigation_id,
        "account": account,
        "report": stored.envelope,
        "keys": keys,
        "log": proof,
        "public_key_pem": master.signing_public_key_pem(signer) if signer is not None else None,
        "channel_keys": channel_keys,
        "provider_keys": provider_keys,
        "note": f"discloses account {account!r}'s key material (its signature pairs) and nothing else; "
        "verify with the operator's public key obtained independently, not with public_key_pem",
    }
