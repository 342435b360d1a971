"""The signature issuer: per-account signature pairs for the watermark rewriter, recorded in the ledger."""

from __future__ import annotations

import dataclasses
import threading

from sqlalchemy.engine import Engine
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger import records
from tracemark.forensics.ledger.db import read_session, session_scope
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.signatures import CandidateSpace, SignaturePair
from tracemark.forensics.tlog import ACCOUNT_KEY_KIND, LogConflict, find_entries
from tracemark.forensics.tlog.accounts import ensure_key_commitment
from tracemark.forensics.tlog.channel import ensure_provider_commitment
from tracemark.foundation.channel import ChannelSpec
from tracemark.foundation.errors import Failed


class SchemeMismatch(Failed):
    """The server's configured signature scheme is not the one logged for its current key version."""


class SignatureIssuer:
    """Derives an account's signature pairs under its :class:`SignatureScheme` (cached) and records every
    issue durably in the ledger.

    Thread-safe. On construction every master-secret version is recorded in the ledger; a ledger written
    under a different master secret is refused (:class:`~tracemark.forensics.ledger.db.LedgerError`).
    """

    def __init__(
        self,
        *,
        master: MasterSecret,
        engine: Engine,
        scheme: SignatureScheme | None = None,
        pairs_per_account: int | None = None,
        space: CandidateSpace | None = None,
    ) -> None:
        if scheme is None:
            overrides: dict = {}
            if pairs_per_account is not None:
                overrides["pairs_per_account"] = pairs_per_account
            if space is not None:
                overrides["digits"] = space.digits
            scheme = SignatureScheme(**overrides)
        elif pairs_per_account is not None or space is not None:
            raise ValueError("give a scheme or pairs_per_account/space, not both")
        self.master = master
        self.engine = engine
        self.scheme = scheme
        self.pairs_per_account = scheme.pairs_per_account
        self.space = scheme.space
        self._cache: dict[tuple[str, int], list[SignaturePair]] = {}
        self._committed: set[tuple[str, int]] = set()  # (account, version) with a key commitment logged
        self._lock = threading.Lock()
        self.sync_key_versions()
        if scheme.channel is not None:
            self.ensure_provider_commitment()

    def __repr__(self) -> str:
        return (
            f"SignatureIssuer(pairs_per_account={self.pairs_per_account}, space_digits={self.space.digits}, "
            f"key_versions={self.master.versions})"
        )

    def scheme_dict(self) -> dict:
        """The public scheme written to the transparency log with each account key commitment."""
        return self.scheme.as_dict()

    def check_scheme(self, *, ignore_channel: bool = False) -> None:
        """Refuse a configured scheme that differs from the one already logged for the current key version
        (:class:`SchemeMismatch`): a scheme changes only with a key rotation, never for issued accounts.
        ``ignore_channel``: compare all but the channel spec (a server opening its ledger before its teacher
        has said which channel it decodes with; :meth:`attach_channel` checks the rest)."""
        version, mine = self.key_version, self.scheme_dict()

        def comparable(scheme: object) -> object:
            if ignore_channel and isinstance(scheme, dict):
                return {k: v for k, v in scheme.items() if k != "channel"}
            return scheme

        for entry in find_entries(self.engine, kind=ACCOUNT_KEY_KIND):
            logged = entry.body.get("scheme")
            if entry.body.get("key_version") == version and comparable(logged) != comparable(mine):
                raise SchemeMismatch(
                    f"the configured signature scheme differs from the one logged for key version {version} "
                    f"(account {entry.body.get('account')!r}); keep the logged scheme or rotate the master "
                    "key (`tracemark keys rotate`) to issue under a new one"
                )

    @property
    def key_version(self) -> int:
        """The master-secret version new traces are signed under."""
        return self.master.current_version

    def sync_key_versions(self) -> None:
        """Record every master-secret version (public fingerprint and signing key id) in the ledger."""
        with session_scope(self.engine) as session:
            for v in self.master.versions:
                records.record_key_version(
                    session,
                    version=v,
                    fingerprint=self.master.fingerprint(v),
                    signing_key_id=self.master.key_id(v),
                )

    def attach_channel(self, spec: ChannelSpec | None) -> None:
        """Issue under ``spec`` from now on (the channel the teacher decodes with; ``None``: off): the scheme
        gains it, it is checked against the log (:class:`SchemeMismatch` when this key version was logged
        under another scheme: a channel is switched on or changed only with a key rotation) and the provider
        key's commitment is logged before any trace is decoded."""
        scheme = dataclasses.replace(self.scheme, channel=spec)
        if scheme == self.scheme:
            self.check_scheme()
            return
        previous, self.scheme = self.scheme, scheme
        try:
            self.check_scheme()
            self.ensure_provider_commitment()
        except BaseException:
            self.scheme = previous
            raise
        with self._lock:
            self._committed.clear()

    def ensure_provider_commitment(self) -> None:
        """Log the commitment to the provider channel key of the current version (before any trace is
        decoded under it; idempotent). A different channel spec already logged for this version:
        :class:`SchemeMismatch`."""
        if self.scheme.channel is None:
            return
        try:
            ensure_provider_commitment(
                self.engine,
                master=self.master,
                key_version=self.key_version,
                spec=self.scheme.channel.as_dict(),
            )
        except LogConflict:
            raise SchemeMismatch(
                "the configured channel spec differs from the one logged for key version "
                f"{self.key_version}: "
                "keep the logged spec or rotate the master key (`tracemark keys rotate`)"
            ) from None

    def ensure_channel_account(self, account: str) -> None:
        """Call before decoding a trace for ``account`` with its channel key: logs the commitment to its
        keys (pair and channel) under the current version once, and registers the account."""
        with self._lock:
            if (account, self.key_version) in self._committed:
                return
        self.ensure_account(account)
        self._ensure_key_commitment(account, self.key_version)

    def pairs_for_version(self, account: str, version: int) -> list[SignaturePair]:
        """``account``'s pairs under master-secret ``version`` (cached)."""
        key = (account, version)
        with self._lock:
            pairs = self._cache.get(key)
        if pairs is None:
            pairs = self.scheme.derive(
                self.master.account_key(account, version=version), account=account, key_version=version
            )
            with self._lock:
                self._cache[key] = pairs
        return list(pairs)

    def pairs_for(self, account: str) -> list[SignaturePair]:
        """``account``'s pairs under the current key version."""
        return self.pairs_for_version(account, self.master.current_version)

    def all_pairs_for(self, account: str) -> list[SignaturePair]:
        """``account``'s pairs under every key version, oldest version first."""
        out: list[SignaturePair] = []
        for v in self.master.versions:
            out.extend(self.pairs_for_version(account, v))
        return out

    def ensure_account(self, account: str) -> None:
        with session_scope(self.engine) as session:
            records.ensure_account(session, name=account)

    def _ensure_key_commitment(self, account: str, version: int) -> None:
        """Log the commitment to ``account``'s key of ``version`` once (the log makes repeats idempotent)."""
        key = (account, version)
        with self._lock:
            if key in self._committed:
                return
        ensure_key_commitment(
            self.engine, master=self.master, account=account, key_version=version, scheme=self.scheme_dict()
        )
        with self._lock:
            self._committed.add(key)

    def record_issue(self, *, account: str, trace_id: str, pair: SignaturePair, rewriter: str) -> None:
        """Durably record that ``trace_id`` carries ``pair`` (committed before returning). The commitment to
        the account's key is in the transparency log before the first such record of (account, version)."""
        if pair.account != account:
            raise ValueError(f"pair {pair.pair_id} belongs to another account than {account!r}")
        if pair not in self.pairs_for_version(account, pair.key_version):
            raise ValueError(f"pair {pair.pair_id} was not derived by this issuer for {account!r}")
        self._ensure_key_commitment(account, pair.key_version)
        with session_scope(self.engine) as session:
            records.record_issued_signature(
                session,
                account=account,
                key_version=pair.key_version,
                pair=pair,
                trace_id=trace_id,
                rewriter=rewriter,
            )

    def issued_counts(self, account: str) -> dict[str, int]:
        """``{pair_id: traces that received it}`` for ``account``."""
        with read_session(self.engine) as session:
            return records.issued_counts(session, account=account)

    def accounts(self) -> list[str]:
        """Every account in the ledger (those that were ever issued a signature or registered)."""
        with read_session(self.engine) as session:
            return records.list_accounts(session)
