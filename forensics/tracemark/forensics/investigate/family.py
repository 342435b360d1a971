"""Who can be accused: the accounts whose signature pairs were delivered, with the scheme logged at issuance.

An investigation tests only pairs that the ledger says went out in a trace (per key version), derived under
the scheme recorded in the transparency log with the account's key commitment. An account name with no
delivered pair (a "ghost": any string an operator might try until an innocent model happens to rank its
derived pairs well) or without a logged key commitment is refused. The family used for the multiplicity
correction is every such account, whether it is scored or not.

With the distributional channel, an account whose key commitment also commits to its channel key (logged by
the issuer before the first trace decoded with that key) is accusable by the channel test even without a
delivered pair; the provider key's commitments (``provider-key`` entries) are listed on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics.investigate.params import InvestigationError
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import LedgerError, read_session
from tracemark.forensics.scheme import SchemeError, SignatureScheme
from tracemark.forensics.signatures import SignaturePair
from tracemark.forensics.tlog import ACCOUNT_KEY_KIND, find_entries, key_subject, provider_entries
from tracemark.foundation.channel import ChannelError, ChannelSpec


@dataclass
class Member:
    """One account of the family: its delivered pairs and the log entries that committed to their keys."""

    account: str
    pairs: list[SignaturePair] = field(default_factory=list)
    schemes: dict[int, SignatureScheme] = field(default_factory=dict)  # by key version
    key_entries: dict[int, int] = field(default_factory=dict)  # key version -> log seq
    channel: dict[int, ChannelSpec] = field(default_factory=dict)  # versions with a committed channel key

    def scheme_of(self, pair: SignaturePair) -> SignatureScheme:
        return self.schemes[pair.key_version]


@dataclass
class Family:
    """Every accusable account (sorted), and the delivered (account, version) pairs left out and why."""

    members: dict[str, Member]
    excluded: dict[str, str] = field(default_factory=dict)
    provider: dict[int, tuple[ChannelSpec, int]] = field(default_factory=dict)  # version -> (spec, log seq)

    @property
    def has_channel(self) -> bool:
        return bool(self.provider) or any(m.channel for m in self.members.values())

    @property
    def size(self) -> int:
        return len(self.members)

    def select(self, accounts: Any) -> dict[str, Member]:
        """The members to score (``None``: all); a name outside the family is refused."""
        if not accounts:
            return dict(self.members)
        out = {}
        for name in accounts:
            if name not in self.members:
                why = self.excluded.get(
                    name, "no signature pair was ever delivered to it, nor a channel key committed"
                )
                raise InvestigationError(f"account {name!r} cannot be investigated: {why}", field="accounts")
            out[name] = self.members[name]
        return out


def resolve_family(engine: Any, master: Any) -> Family:
    """Build the family from the ledger's delivered pairs and the log's key commitments."""
    commitments = {e.subject: e for e in find_entries(engine, kind=ACCOUNT_KEY_KIND)}
    members: dict[str, Member] = {}
    excluded: dict[str, str] = {}
    with read_session(engine) as session:
        delivered = records.delivered_pairs(session)
    for (account, version), indices in sorted(delivered.items()):
        entry = commitments.get(key_subject(account, version))
        if entry is None:
            excluded[account] = f"no key commitment for key version {version} in the transparency log"
            continue
        try:
            scheme = SignatureScheme.from_dict(entry.body.get("scheme"))
        except SchemeError as exc:
            excluded[account] = f"its logged scheme is unreadable: {exc}"
            continue
        key = master.account_key(account, version=version)
        pairs = scheme.derive(key, account=account, key_version=version)
        by_index = {p.index: p for p in pairs}
        member = members.setdefault(account, Member(account))
        for index, pair_id in sorted(indices.items()):
            pair = by_index.get(index)
            if pair is None or pair.pair_id != pair_id:
                raise LedgerError(
                    f"ledger and log disagree on account {account!r} key version {version} pair {index}"
                )
            member.pairs.append(pair)
        member.schemes[version] = scheme
        member.key_entries[version] = entry.seq
    for entry in commitments.values():  # accounts whose channel key was committed (traces decoded with it)
        account, version = entry.body.get("account"), entry.body.get("key_version")
        if not entry.body.get("channel_commitment") or not isinstance(account, str) or account in excluded:
            continue
        try:
            scheme = SignatureScheme.from_dict(entry.body.get("scheme"))
        except SchemeError as exc:
            excluded[account] = f"its logged scheme is unreadable: {exc}"
            continue
        if scheme.channel is None:
            continue
        member = members.setdefault(account, Member(account))
        member.schemes.setdefault(version, scheme)
        member.key_entries.setdefault(version, entry.seq)
        member.channel[version] = scheme.channel
    provider = {}
    for version, entry in provider_entries(engine).items():
        try:
            provider[version] = (ChannelSpec.from_dict(dict(entry.body.get("channel") or {})), entry.seq)
        except (ChannelError, TypeError, ValueError):
            continue  # an unreadable provider entry is not tested (never a reason to accuse)
    for name in list(members):
        if name in excluded:  # one unusable key version excludes the account (its evidence is incomplete)
            del members[name]
    return Family(dict(sorted(members.items())), excluded, provider)
