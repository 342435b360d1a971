"""Channel key files: the distributional channel's derived keys, exported for a decoder on another host.

A decoder outside the tracemark server (a vLLM engine with the ``tracemark-vllm`` logits processor) must
bias decoding with the same keys as :meth:`tracemark.forensics.keys.MasterSecret.channel_key`, but it
should never hold the master secret (which also derives every account's signature pairs, the commitment
keys and the report-signing key). ``tracemark keys export-channel`` writes this file instead: the public
channel spec, the provider channel key of one master version, and the channel keys of the listed
accounts. Whoever reads it can find (and so try to scrub) the green lists of those keys; nothing else.

Format (JSON, mode 0600; a group- or other-readable file is refused like the master secret)::

    {"format": "tracemark-channel-keys/1", "version": 1, "fingerprint": "<master version fingerprint>",
     "spec": {"gamma": 0.25, ...}, "provider": "<64 hex>", "accounts": {"alice": "<64 hex>", ...}}

:class:`ChannelKeyFile` reloads the file when it changes on disk (a re-export with new accounts is picked
up without restarting the decoder); a reload that changes the spec, the version or the provider key is
refused (those need a restart, since traces already decoded were under the old ones).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from tracemark.forensics.keys import (
    MasterKeyError,
    MasterSecret,
    _check_permissions,
    _fsync_dir,
    _write_private_tmp,
)
from tracemark.foundation.channel import ChannelKey, ChannelSpec
from tracemark.foundation.errors import Failed, NotFound

log = logging.getLogger(__name__)

FORMAT = "tracemark-channel-keys/1"
ENV_CHANNEL_KEY_FILE = "TRACEMARK_CHANNEL_KEY_FILE"


class ChannelKeyFileError(Failed):
    """The channel key file is missing, malformed or insecure."""


class UnknownChannelAccount(NotFound):
    """The channel key file holds no key for this account (re-export it with the account)."""


def export_channel_keys(
    master: MasterSecret, spec: ChannelSpec, accounts: Iterable[str], *, version: int | None = None
) -> str:
    """The key file's JSON text for ``accounts`` under master ``version`` (default: the current one)."""
    v = master.current_version if version is None else version
    names = sorted({a.strip() for a in accounts if a and a.strip()})
    body = {
        "format": FORMAT,
        "version": v,
        "fingerprint": master.fingerprint(v),
        "spec": spec.as_dict(),
        "provider": master.channel_key(None, version=v).secret.hex(),
        "accounts": {name: master.channel_key(name, version=v).secret.hex() for name in names},
    }
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def write_channel_key_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (replacing an older export)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _write_private_tmp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _hex_key(value, what: str, path: Path) -> bytes:
    try:
        secret = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        secret = b""
    if len(secret) != 32:
        raise ChannelKeyFileError(f"channel key file {path}: {what} is not a 64-hex key")
    return secret


def _parse(text: str, path: Path) -> tuple[ChannelSpec, int, str, bytes, dict[str, bytes]]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise ChannelKeyFileError(f"channel key file {path} is not valid JSON") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ChannelKeyFileError(f"channel key file {path} is not in format {FORMAT!r}")
    version = body.get("version")
    if not isinstance(version, int) or version < 1:
        raise ChannelKeyFileError(f"channel key file {path}: bad version {version!r}")
    try:
        spec = ChannelSpec.from_dict(body.get("spec") or {})
    except (TypeError, ValueError) as exc:
        raise ChannelKeyFileError(f"channel key file {path}: bad spec ({exc})") from None
    provider = _hex_key(body.get("provider"), "the provider key", path)
    raw = body.get("accounts")
    if not isinstance(raw, dict):
        raise ChannelKeyFileError(f"channel key file {path}: accounts must be an object")
    accounts = {str(name): _hex_key(value, f"account {name!r}", path) for name, value in raw.items()}
    return spec, version, str(body.get("fingerprint") or ""), provider, accounts


class ChannelKeyFile:
    """The keys of an exported channel key file (see the module doc); thread-safe; never shows a key."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.spec, self.version, self.fingerprint, self._provider, self._accounts = self._read()

    @classmethod
    def from_env(cls) -> ChannelKeyFile:
        """The file named by ``$TRACEMARK_CHANNEL_KEY_FILE``."""
        value = os.environ.get(ENV_CHANNEL_KEY_FILE, "").strip()
        if not value:
            raise ChannelKeyFileError(
                f"no channel keys: set {ENV_CHANNEL_KEY_FILE} to a file from `tracemark keys export-channel`"
            )
        return cls(Path(value))

    def _read(self) -> tuple[ChannelSpec, int, str, bytes, dict[str, bytes]]:
        try:
            st = self.path.stat()
            _check_permissions(self.path)
            text = self.path.read_text(encoding="utf-8")
        except MasterKeyError as exc:
            raise ChannelKeyFileError(str(exc).replace("master secret", "channel key file")) from None
        except OSError as exc:
            raise ChannelKeyFileError(f"cannot read channel key file {self.path}: {exc.strerror}") from None
        self._stamp = (st.st_mtime_ns, st.st_size)
        return _parse(text, self.path)

    def refresh(self) -> bool:
        """Reload the accounts if the file changed on disk; True when it did. A changed spec, version or
        provider key is refused (logged; the keys in use stay)."""
        try:
            st = self.path.stat()
        except OSError:
            return False
        if (st.st_mtime_ns, st.st_size) == self._stamp:
            return False
        with self._lock:
            try:
                spec, version, fingerprint, provider, accounts = self._read()
            except ChannelKeyFileError as exc:
                log.error("channel key file not reloaded: %s", exc)
                return False
            if (spec, version, provider) != (self.spec, self.version, self._provider):
                log.error(
                    "channel key file %s now has another spec, version or provider key; restart the decoder "
                    "to use it (keeping the keys in use)",
                    self.path,
                )
                return False
            self.fingerprint, self._accounts = fingerprint, accounts
            log.info("channel key file %s reloaded: %d accounts", self.path, len(accounts))
            return True

    @property
    def accounts(self) -> list[str]:
        return sorted(self._accounts)

    def has_account(self, name: str) -> bool:
        return name in self._accounts

    def provider_key(self) -> ChannelKey:
        return ChannelKey(secret=self._provider, scope="provider", version=self.version)

    def account_key(self, name: str) -> ChannelKey:
        """``name``'s channel key (the same as the master secret's ``channel_key(name)``)."""
        secret = self._accounts.get(name)
        if secret is None:
            raise UnknownChannelAccount(
                f"no channel key for account {name!r} in {self.path}; re-export it with that account"
            )
        return ChannelKey(secret=secret, scope="account", name=name, version=self.version)

    def __repr__(self) -> str:
        n = len(self._accounts)
        return f"ChannelKeyFile(path={str(self.path)!r}, version={self.version}, accounts={n})"

    def __reduce__(self):  # never pickle key material by accident
        raise TypeError("channel key files cannot be pickled")
