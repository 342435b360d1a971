"""The offline checks of a disclosure bundle, before any suspect is queried (no master secret, no ledger).

Each check appends human-readable problems to a list instead of raising: a bundle that does not verify is
a finding ("not reproduced"), not bad input. Only a bundle that is not a disclosure at all (wrong format,
missing fields, keys that are not hex) raises
:class:`~tracemark.forensics.rederive.disclosure.DisclosureError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics.rederive.disclosure import (
    DISCLOSURE_FORMAT,
    INVESTIGATION_KIND,
    DisclosureError,
    registered_channel_keys,
    registered_pairs,
    registered_provider_keys,
)
from tracemark.forensics.reports import EnvelopeError, decode_report, report_hash, verify_envelope
from tracemark.forensics.reports.dsse import envelope_body
from tracemark.forensics.scheme import SchemeError, SignatureScheme
from tracemark.forensics.signatures import SignaturePair
from tracemark.forensics.tlog import (
    ACCOUNT_KEY_KIND,
    PROVIDER_KEY_KIND,
    LogEntryView,
    LogError,
    key_subject,
    open_channel_commitment,
    open_key_commitment,
    verify_inclusion,
)
from tracemark.foundation.channel import ChannelKey

IDENTITY_FIELDS = ("weights_sha256", "tokenizer_sha256", "chat_template_sha256")
ACCOUNT_KEY_HEX = 64


@dataclass
class Bundle:
    """A parsed disclosure bundle (structure only; nothing verified yet). ``keys``: version -> key bytes."""

    account: str
    report_id: str
    envelope: Any
    log: Any
    keys: dict[int, bytes] = field(repr=False)  # never show key material
    channel_keys: dict[int, bytes] = field(default_factory=dict, repr=False)
    provider_keys: dict[int, bytes] = field(default_factory=dict, repr=False)


@dataclass
class Verified:
    """What the checks established: the report, the log entries it rests on, the account's pairs."""

    report: dict | None = None
    entries: dict[int, LogEntryView] = field(default_factory=dict)
    registration: LogEntryView | None = None
    report_entry: LogEntryView | None = None
    pairs: list[tuple[SignaturePair, SignatureScheme]] = field(default_factory=list)
    channel_keys: dict[int, ChannelKey] = field(default_factory=dict, repr=False)  # opened account keys
    provider_keys: dict[int, ChannelKey] = field(default_factory=dict, repr=False)  # opened, if disclosed
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_bundle(bundle: Any) -> Bundle:
    """Check the bundle's shape; :class:`DisclosureError` (one line, no key material) when malformed."""
    if not isinstance(bundle, Mapping) or bundle.get("format") != DISCLOSURE_FORMAT:
        raise DisclosureError(f"not a disclosure bundle (format {DISCLOSURE_FORMAT!r})")
    missing = [k for k in ("account", "report_id", "report", "keys", "log") if k not in bundle]
    if missing:
        raise DisclosureError(f"the disclosure bundle has no {', '.join(missing)} field(s)")
    account, report_id = bundle["account"], bundle["report_id"]
    if not isinstance(account, str) or not account or not isinstance(report_id, str) or not report_id:
        raise DisclosureError("the bundle's account and report_id must be non-empty strings")
    raw_keys = bundle["keys"]
    if not isinstance(raw_keys, list) or not raw_keys:
        raise DisclosureError("the bundle's keys must be a non-empty list of {key_version, account_key}")
    keys: dict[int, bytes] = {}
    for number, item in enumerate(raw_keys, start=1):
        version = item.get("key_version") if isinstance(item, Mapping) else None
        text = item.get("account_key") if isinstance(item, Mapping) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DisclosureError(f"keys[{number}]: key_version must be a positive integer")
        if not isinstance(text, str) or len(text) != ACCOUNT_KEY_HEX:
            raise DisclosureError(f"keys[{number}]: account_key must be {ACCOUNT_KEY_HEX} hex digits")
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise DisclosureError(
                f"keys[{number}]: account_key must be {ACCOUNT_KEY_HEX} hex digits"
            ) from None
        if version in keys:
            raise DisclosureError(f"keys[{number}]: key version {version} is disclosed twice")
        keys[version] = key
    channel = _hex_keys(bundle.get("channel_keys") or [], "channel_keys", "channel_key")
    provider = _hex_keys(bundle.get("provider_keys") or [], "provider_keys", "provider_key")
    return Bundle(account, report_id, bundle["report"], bundle["log"], keys, channel, provider)


def _hex_keys(items: Any, name: str, field_name: str) -> dict[int, bytes]:
    """``{version: 32 bytes}`` of a bundle's optional channel key list."""
    if not isinstance(items, list):
        raise DisclosureError(f"the bundle's {name} must be a list")
    out: dict[int, bytes] = {}
    for number, item in enumerate(items, start=1):
        version = item.get("key_version") if isinstance(item, Mapping) else None
        text = item.get(field_name) if isinstance(item, Mapping) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version in out:
            raise DisclosureError(f"{name}[{number}]: key_version must be a new positive integer")
        try:
            if not isinstance(text, str) or len(text) != ACCOUNT_KEY_HEX:
                raise ValueError
            out[version] = bytes.fromhex(text)
        except ValueError:
            raise DisclosureError(
                f"{name}[{number}]: {field_name} must be {ACCOUNT_KEY_HEX} hex digits"
            ) from None
    return out


def check_log(bundle: Bundle, public_key: Any, out: Verified) -> None:
    """(a) the inclusion proof chains every included entry to a checkpoint signed by ``public_key``."""
    result = verify_inclusion(bundle.log, public_key)
    if not result.valid:
        out.problems.extend(f"log: {p}" for p in result.problems)
        return
    for raw in bundle.log["entries"]:
        entry = LogEntryView.from_dict(raw)
        out.entries[entry.seq] = entry
    out.passed.append(
        f"log: {len(out.entries)} entries chain to a checkpoint signed over {result.size} entries"
    )


def check_report(bundle: Bundle, public_key: Any, out: Verified) -> None:
    """(b) the report envelope's signature verifies with ``public_key``, and it is this bundle's report."""
    result = verify_envelope(bundle.envelope, public_key=public_key)
    if not result.valid:
        out.problems.extend(f"report: {p}" for p in result.problems)
        return
    report = decode_report(bundle.envelope)
    if report.get("report_id") != bundle.report_id:
        out.problems.append(
            f"report: the envelope holds report {report.get('report_id')!r}, not the bundle's"
        )
        return
    if report.get("kind") != INVESTIGATION_KIND or not isinstance(report.get("registration"), Mapping):
        out.problems.append("report: not a pre-registered investigation report")
        return
    out.report = report
    out.passed.append(f"report: signature verified (key {result.key_id})")


def _entry(out: Verified, seq: Any, what: str) -> LogEntryView | None:
    entry = out.entries.get(seq) if isinstance(seq, int) else None
    if entry is None:
        out.problems.append(f"links: the bundle's log proof does not include {what} (entry #{seq})")
    return entry


def check_links(bundle: Bundle, out: Verified) -> None:
    """(c) the report cites the included registration (hash, beacon), and the report's log entry names the
    report's hash and was logged after the registration."""
    report = out.report
    if report is None or not out.entries:
        return
    cited = report["registration"]
    investigation = report.get("investigation_id")
    before = len(out.problems)
    reg = _entry(out, cited.get("log_seq"), "the registration the report cites")
    if reg is not None:
        if reg.kind != "registration" or reg.subject != f"investigation:{investigation}":
            out.problems.append(
                f"links: entry #{reg.seq} is not the registration of investigation {investigation}"
            )
        if reg.entry_hash != cited.get("entry_hash"):
            out.problems.append(
                f"links: the report cites registration hash {cited.get('entry_hash')}, "
                f"the log holds {reg.entry_hash}"
            )
        if cited.get("beacon") != reg.entry_hash:
            out.problems.append("links: the report's beacon is not the registration entry's hash")
    subject = f"report:{bundle.report_id}"
    logged = [e for e in out.entries.values() if e.kind == "report" and e.subject == subject]
    if not logged:
        out.problems.append(f"links: the bundle's log proof includes no entry {subject!r}")
    else:
        entry = logged[0]
        body = entry.body
        try:
            signed_hash = report_hash(envelope_body(bundle.envelope))
        except EnvelopeError as exc:
            out.problems.append(f"links: {exc}")
            signed_hash = None
        if body.get("report_hash") != signed_hash:
            out.problems.append(
                f"links: log entry #{entry.seq} names another report hash than the signed report's"
            )
        if body.get("investigation_id") != investigation or body.get("report_id") != bundle.report_id:
            out.problems.append(f"links: log entry #{entry.seq} names another report or investigation")
        if reg is not None and (body.get("registration_seq") != reg.seq or not reg.seq < entry.seq):
            out.problems.append(
                f"links: the report's log entry #{entry.seq} does not follow its registration #{reg.seq}"
            )
        out.report_entry = entry
    if len(out.problems) == before:
        out.registration = reg
        out.passed.append(
            f"links: registration #{reg.seq} precedes the report's log entry #{out.report_entry.seq}; "
            "hashes and beacon agree"
        )


def check_keys(bundle: Bundle, out: Verified) -> None:
    """(d) + (e): each disclosed key opens the account's key commitment of its version in the log, and the
    pairs derived from it under the scheme logged at issuance have the registration's public ids."""
    reg = out.registration
    if reg is None:
        return
    account = bundle.account
    wanted = registered_pairs(reg.body, account)
    channel = registered_channel_keys(reg.body, account)
    if not wanted and not channel:
        out.problems.append(f"keys: the registration lists no pair or channel key of account {account!r}")
        return
    before = len(out.problems)
    schemes: dict[int, SignatureScheme] = {}
    entries = {(p.get("key_version"), p.get("key_entry")) for p in wanted} | set(channel.items())
    for version, seq in sorted(entries, key=str):
        entry = _entry(out, seq, f"the commitment to key version {version}")
        if entry is None:
            continue
        if entry.kind != ACCOUNT_KEY_KIND or entry.subject != key_subject(account, version):
            out.problems.append(
                f"keys: entry #{seq} is not {account!r}'s key commitment of version {version}"
            )
            continue
        key = bundle.keys.get(version)
        if key is None:
            out.problems.append(f"keys: the bundle discloses no key of version {version}")
            continue
        try:
            opened = open_key_commitment(entry.body, key)
            scheme = SignatureScheme.from_dict(entry.body.get("scheme"))
        except (LogError, SchemeError) as exc:
            out.problems.append(f"keys: entry #{seq}: {exc}")
            continue
        if not opened:
            out.problems.append(
                f"keys: the disclosed key of version {version} does not open {account!r}'s commitment in log "
                f"entry #{seq} (not this account's key)"
            )
            continue
        schemes[version] = scheme
    extra = sorted(set(bundle.keys) - {p.get("key_version") for p in wanted} - set(channel))
    if extra:
        out.problems.append(
            f"keys: the bundle discloses key version(s) {extra} the registration does not use"
        )
    if len(out.problems) > before:
        return
    derived: dict[tuple[int, int], SignaturePair] = {}
    for version, scheme in schemes.items():
        for pair in scheme.derive(bundle.keys[version], account=account, key_version=version):
            derived[(version, pair.index)] = pair
    for p in wanted:
        pair = derived.get((p.get("key_version"), p.get("index")))
        scheme = schemes[p["key_version"]]
        if pair is None or pair.pair_id != p.get("pair_id"):
            out.problems.append(
                f"pairs: registered pair {p.get('pair_id')!r} (version {p.get('key_version')}, index "
                f"{p.get('index')}) is not what the disclosed key derives"
            )
        elif p.get("scheme") != scheme.digest():
            out.problems.append(
                f"pairs: pair {pair.pair_id} was registered under another scheme than the logged one"
            )
        else:
            out.pairs.append((pair, scheme))
    if len(out.problems) == before:
        out.passed.append(
            f"keys: {len(schemes)} key commitment(s) opened; {len(out.pairs)} derived pair id(s) equal the "
            "registration's"
        )
        check_channel_keys(bundle, out, channel)


def check_channel_keys(bundle: Bundle, out: Verified, channel: dict[int, int]) -> None:
    """(d') each registered channel key of the account (and the provider's, when disclosed) opens its
    commitment in the log under the channel spec the registration tests."""
    reg = out.registration
    section = reg.body.get("channel") if reg is not None else None
    specs = section.get("specs") if isinstance(section, Mapping) else None
    before = len(out.problems)
    for version, seq in sorted(channel.items()):
        entry = out.entries.get(seq)
        secret = bundle.channel_keys.get(version)
        if entry is None or secret is None:
            out.problems.append(
                f"channel: no disclosed channel key or log entry #{seq} for version {version}"
            )
            continue
        scheme = entry.body.get("scheme") if isinstance(entry.body.get("scheme"), Mapping) else {}
        if not isinstance(specs, Mapping) or scheme.get("channel") != specs.get(str(version)):
            out.problems.append(
                f"channel: entry #{seq} was logged under another spec than the registered one"
            )
        elif not open_channel_commitment(entry.body, secret, scope="account"):
            out.problems.append(
                f"channel: the disclosed channel key of version {version} does not open entry #{seq}"
            )
        else:
            out.channel_keys[version] = ChannelKey(
                secret=secret, scope="account", name=bundle.account, version=version
            )
    provider = registered_provider_keys(reg.body) if reg is not None else {}
    for version, secret in sorted(bundle.provider_keys.items()):
        entry = out.entries.get(provider.get(version, -1))
        if entry is None or entry.kind != PROVIDER_KEY_KIND:
            out.problems.append(
                f"channel: the provider key of version {version} has no registered entry in the proof"
            )
        elif not open_channel_commitment(entry.body, secret, scope="provider"):
            out.problems.append(f"channel: the disclosed provider key does not open entry #{entry.seq}")
        else:
            out.provider_keys[version] = ChannelKey(secret=secret, scope="provider", version=version)
    extra = sorted(set(bundle.channel_keys) - set(channel))
    if extra:
        out.problems.append(f"channel: the bundle discloses channel key version(s) {extra} not registered")
    if len(out.problems) == before and (channel or bundle.provider_keys):
        out.passed.append(
            f"channel: {len(out.channel_keys)} account channel key(s) and {len(out.provider_keys)} provider "
            "key(s) open their commitments under the registered spec"
        )


def check_identity(identity: Mapping[str, Any], out: Verified) -> None:
    """(f) the suspect's weights, tokenizer and chat-template hashes equal those the registration names."""
    reg = out.registration
    if reg is None:
        return
    registered = reg.body.get("suspect_identity")
    registered = registered if isinstance(registered, Mapping) else {}
    named = [f for f in IDENTITY_FIELDS if registered.get(f)]
    if not named:
        out.problems.append(
            "suspect: the registration names no weights, tokenizer or chat-template hash (a remote suspect): "
            "the model you hold cannot be shown to be the one investigated"
        )
        return
    differ = [f for f in named if identity.get(f) != registered[f]]
    if differ:
        out.problems.append(
            f"suspect: the model you gave is not the one investigated ({', '.join(differ)} differ from the "
            "registration's)"
        )
        return
    out.passed.append(f"suspect: {', '.join(named)} equal the registration's")
