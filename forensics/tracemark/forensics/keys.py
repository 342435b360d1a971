"""The server master secret: versioned, stored 0600, never shown.

Everything keyed in tracemark is derived from it:

* per-account keys (HMAC-SHA256 with a domain-separation label) from which signature pairs are derived,
* per-investigation commitment keys (HMAC-SHA256) under which reports commit to queries and pairs,
* the Ed25519 key that signs evidence reports (HKDF-SHA256), one per version,
* public fingerprints (a short hash of a derived value) that identify a version without revealing it.

Sources, first match wins: ``TRACEMARK_MASTER_KEY`` (hex, >= 32 bytes; a comma-separated list gives versions
1..n), ``TRACEMARK_MASTER_KEY_FILE``, the ``path`` argument, ``<user_data_dir>/master.key``.

Key file format (JSON, mode 0600)::

    {"format": "tracemark-master-key/1",
     "versions": {"1": {"secret": "<64 hex>", "created_at": "2026-01-01T00:00:00Z"}, "2": {...}}}

A file holding only a hex string (e.g. a mounted secret) is read as version 1. Rotation appends version
n+1 and keeps the older ones, so signatures issued under an old version stay detectable and old reports
stay verifiable. A key file readable by group or others is refused (``TRACEMARK_ALLOW_INSECURE_KEY_FILE=1``
downgrades that to a warning).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tracemark.foundation.channel import ChannelKey
from tracemark.foundation.errors import Failed, NotFound, PermissionDenied
from tracemark.foundation.paths import user_data_dir

log = logging.getLogger(__name__)

ENV_KEY = "TRACEMARK_MASTER_KEY"
ENV_KEY_FILE = "TRACEMARK_MASTER_KEY_FILE"
ENV_ALLOW_INSECURE = "TRACEMARK_ALLOW_INSECURE_KEY_FILE"
FILE_FORMAT = "tracemark-master-key/1"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 32
DEFAULT_FILE_NAME = "master.key"

_LABEL_ACCOUNT = b"tracemark/v1/account-key\x00"
_LABEL_FINGERPRINT = b"tracemark/v1/fingerprint"
_LABEL_COMMITMENT = b"tracemark/v1/commitment-key\x00"
_LABEL_CHANNEL_PROVIDER = b"tracemark/v1/channel-provider-key"
_LABEL_CHANNEL_ACCOUNT = b"tracemark/v1/channel-account-key\x00"
_HKDF_SALT = b"tracemark/v1/report-signing"
_HKDF_INFO = b"ed25519-report-signing-key"


class MasterKeyError(Failed):
    """The master secret is missing, malformed, insecure or cannot do what was asked.

    A ``Failed`` kind: the secret is the server's own configuration, not the caller's input (the CLI still
    reports it as a one-line error, exit 2); the missing and insecure cases carry their own kinds."""


class MasterKeyNotFound(NotFound, MasterKeyError):
    """No master secret exists where one was expected (and creation was not allowed)."""


class InsecureKeyFile(PermissionDenied, MasterKeyError):
    """The key file is readable or writable by group/others."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Version:
    secret: bytes = field(repr=False)
    created_at: str = ""


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """Stable identifier of an Ed25519 public key: ``tracemark:`` + 16 hex of SHA-256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "tracemark:" + hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key from PEM (as written by ``tracemark keys public-key``)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except ValueError:
        raise MasterKeyError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MasterKeyError("the PEM public key is not an Ed25519 key")
    return key


def _parse_hex(value: str, what: str) -> bytes:
    text = value.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise MasterKeyError(f"{what} is not valid hex") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise MasterKeyError(f"{what} is too short: {len(secret)} bytes, need at least {MIN_SECRET_BYTES}")
    return secret


def default_key_path() -> Path:
    """``<user_data_dir>/master.key``."""
    return user_data_dir() / DEFAULT_FILE_NAME


class MasterSecret:
    """A versioned master secret. Never printed: ``repr`` and ``public_info`` show public data only."""

    def __init__(self, versions: dict[int, _Version], *, source: str, path: Path | None = None) -> None:
        if not versions:
            raise MasterKeyError("a master secret needs at least one version")
        for v, ver in versions.items():
            if not isinstance(v, int) or v < 1:
                raise MasterKeyError(f"key versions must be positive integers, got {v!r}")
            if len(ver.secret) < MIN_SECRET_BYTES:
                raise MasterKeyError(f"key version {v} is shorter than {MIN_SECRET_BYTES} bytes")
        self._versions = dict(sorted(versions.items()))
        self._source = source
        self._path = path
        self._signing_cache: dict[int, Ed25519PrivateKey] = {}

    # --- loading / creating -------------------------------------------------------------------
    @classmethod
    def load(cls, *, path: Path | None = None, create: bool = True) -> MasterSecret:
        """Load the master secret from the first available source (see module doc).

        A missing file is generated (``secrets``, 0600) when ``create`` is true, else
        :class:`MasterKeyNotFound` is raised.
        """
        env_value = os.environ.get(ENV_KEY, "").strip()
        if env_value:
            parts = [p for p in env_value.split(",") if p.strip()]
            versions = {
                i: _Version(_parse_hex(p, f"{ENV_KEY} (version {i})")) for i, p in enumerate(parts, start=1)
            }
            return cls(versions, source=f"env:{ENV_KEY}")
        file_path = cls.resolve_path(path)
        if not file_path.exists():
            if not create:
                raise MasterKeyNotFound(
                    f"no master secret at {file_path}; run `tracemark keys create` (or set {ENV_KEY})"
                )
            return cls._create_file(file_path, exclusive_ok=True)
        return cls._read_file(file_path)

    @staticmethod
    def resolve_path(path: Path | None = None) -> Path:
        """The key file a :meth:`load` without ``TRACEMARK_MASTER_KEY`` would use."""
        env_file = os.environ.get(ENV_KEY_FILE, "").strip()
        if env_file:
            return Path(env_file).expanduser()
        if path is not None:
            return Path(path).expanduser()
        return default_key_path()

    @classmethod
    def create(cls, *, path: Path | None = None) -> MasterSecret:
        """Generate a new master secret file; fails if one already exists there."""
        if os.environ.get(ENV_KEY, "").strip():
            raise MasterKeyError(f"the master secret comes from {ENV_KEY}; there is no file to create")
        file_path = cls.resolve_path(path)
        if file_path.exists():
            raise MasterKeyError(
                f"a master secret already exists at {file_path} (use `tracemark keys rotate`)"
            )
        return cls._create_file(file_path, exclusive_ok=False)

    @classmethod
    def _create_file(cls, file_path: Path, *, exclusive_ok: bool) -> MasterSecret:
        versions = {1: _Version(secrets.token_bytes(SECRET_BYTES), _now())}
        file_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = _write_private_tmp(file_path, _dump(versions))
        try:
            os.link(tmp, file_path)  # atomic and exclusive: a concurrent creator cannot be overwritten
        except FileExistsError:
            if not exclusive_ok:
                raise MasterKeyError(f"a master secret already exists at {file_path}") from None
            return cls._read_file(file_path)  # another process created it first: use theirs
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(file_path.parent)
        log.info("created master secret %s (version 1)", file_path)
        return cls(versions, source="file", path=file_path)

    @classmethod
    def _read_file(cls, file_path: Path) -> MasterSecret:
        _check_permissions(file_path)
        try:
            text = file_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MasterKeyError(f"cannot read master secret {file_path}: {exc.strerror}") from None
        return cls(_parse_file(text, file_path), source="file", path=file_path)

    # --- public properties ----------------------------------------------------------------------
    @property
    def current_version(self) -> int:
        return max(self._versions)

    @property
    def versions(self) -> list[int]:
        return list(self._versions)

    @property
    def source(self) -> str:
        """``file`` or ``env:TRACEMARK_MASTER_KEY``."""
        return self._source

    @property
    def path(self) -> Path | None:
        return self._path

    def _secret(self, version: int | None) -> bytes:
        v = self.current_version if version is None else version
        try:
            return self._versions[v].secret
        except KeyError:
            raise MasterKeyError(f"unknown key version {v}; known versions: {self.versions}") from None

    # --- derivations ----------------------------------------------------------------------------
    def account_key(self, account: str, *, version: int | None = None) -> bytes:
        """HMAC-SHA256(master_v, label || account): the key that seeds ``account``'s signature pairs."""
        if not isinstance(account, str) or not account:
            raise MasterKeyError("account must be a non-empty string")
        return hmac.new(self._secret(version), _LABEL_ACCOUNT + account.encode("utf-8"), "sha256").digest()

    def channel_key(self, account: str | None = None, *, version: int | None = None) -> ChannelKey:
        """The distributional channel's key (:mod:`tracemark.foundation.channel`): the provider key for
        ``account=None`` (one per master version; it marks every trace), else ``account``'s own key.
        Independent of the signature-pair key: disclosing one reveals nothing of the other."""
        v = self.current_version if version is None else version
        if account is None:
            secret = hmac.new(self._secret(v), _LABEL_CHANNEL_PROVIDER, "sha256").digest()
            return ChannelKey(secret=secret, scope="provider", version=v)
        if not isinstance(account, str) or not account:
            raise MasterKeyError("account must be a non-empty string")
        label = _LABEL_CHANNEL_ACCOUNT + account.encode("utf-8")
        secret = hmac.new(self._secret(v), label, "sha256").digest()
        return ChannelKey(secret=secret, scope="account", name=account, version=v)

    def commitment_key(self, investigation_id: str, *, version: int | None = None) -> bytes:
        """HMAC-SHA256(master_v, label || investigation_id): the key of one investigation's (one report's)
        commitments (:mod:`~tracemark.forensics.commitments`); disclosing it reveals no other key."""
        if not isinstance(investigation_id, str) or not investigation_id:
            raise MasterKeyError("investigation_id must be a non-empty string")
        return hmac.new(
            self._secret(version), _LABEL_COMMITMENT + investigation_id.encode("utf-8"), "sha256"
        ).digest()

    def fingerprint(self, version: int | None = None) -> str:
        """Short public identifier of a version (16 hex of SHA-256 over a derived value)."""
        derived = hmac.new(self._secret(version), _LABEL_FINGERPRINT, "sha256").digest()
        return hashlib.sha256(derived).hexdigest()[:16]

    def signing_key(self, version: int | None = None) -> Ed25519PrivateKey:
        """The Ed25519 report-signing key of ``version`` (default: current), derived with HKDF."""
        v = self.current_version if version is None else version
        key = self._signing_cache.get(v)
        if key is None:
            seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(
                self._secret(v)
            )
            key = Ed25519PrivateKey.from_private_bytes(seed)
            self._signing_cache[v] = key
        return key

    def signing_public_key(self, version: int | None = None) -> Ed25519PublicKey:
        return self.signing_key(version).public_key()

    def signing_public_key_pem(self, version: int | None = None) -> str:
        """PEM (SubjectPublicKeyInfo) of the report-signing public key, for third-party verifiers."""
        return (
            self.signing_public_key(version)
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def key_id(self, version: int | None = None) -> str:
        """Key id of the report-signing key (the DSSE ``keyid``)."""
        return public_key_id(self.signing_public_key(version))

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Report-signing public keys of every version, by key id."""
        return {self.key_id(v): self.signing_public_key(v) for v in self.versions}

    def public_info(self) -> dict:
        """Public description: per version its fingerprint, creation time and signing key id. No secrets."""
        return {
            "source": self._source,
            "path": str(self._path) if self._path else None,
            "current_version": self.current_version,
            "versions": [
                {
                    "version": v,
                    "fingerprint": self.fingerprint(v),
                    "created_at": ver.created_at or None,
                    "signing_key_id": self.key_id(v),
                }
                for v, ver in self._versions.items()
            ],
        }

    # --- rotation -------------------------------------------------------------------------------
    def rotate(self) -> int:
        """Add version n+1 (fresh random secret) to the key file, keep older versions; return n+1."""
        if self._path is None:
            raise MasterKeyError(
                f"cannot rotate a master secret given by {ENV_KEY}; append a new hex value to its "
                "comma-separated list instead"
            )
        with _file_lock(self._path):
            current = _parse_file(self._path.read_text(encoding="utf-8"), self._path)
            new_version = max(current) + 1
            current[new_version] = _Version(secrets.token_bytes(SECRET_BYTES), _now())
            tmp = _write_private_tmp(self._path, _dump(current))
            os.replace(tmp, self._path)
            _fsync_dir(self._path.parent)
        self._versions = dict(sorted(current.items()))
        log.info("rotated master secret %s to version %d", self._path, new_version)
        return new_version

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path else ""
        return f"MasterSecret(source={self._source!r}{where}, versions={self.versions})"

    __str__ = __repr__

    def __reduce__(self):  # never pickle key material by accident
        raise TypeError("MasterSecret cannot be pickled")


# --- file helpers -------------------------------------------------------------------------------
def _dump(versions: dict[int, _Version]) -> str:
    body = {
        "format": FILE_FORMAT,
        "versions": {
            str(v): {"secret": ver.secret.hex(), "created_at": ver.created_at} for v, ver in versions.items()
        },
    }
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def _parse_file(text: str, file_path: Path) -> dict[int, _Version]:
    stripped = text.strip()
    if not stripped:
        raise MasterKeyError(f"master secret file {file_path} is empty")
    if not stripped.startswith("{"):
        return {1: _Version(_parse_hex(stripped, f"master secret file {file_path}"))}
    try:
        body = json.loads(stripped)
    except json.JSONDecodeError:
        raise MasterKeyError(f"master secret file {file_path} is not valid JSON") from None
    if not isinstance(body, dict) or body.get("format") != FILE_FORMAT:
        raise MasterKeyError(f"master secret file {file_path} is not in format {FILE_FORMAT!r}")
    raw = body.get("versions")
    if not isinstance(raw, dict) or not raw:
        raise MasterKeyError(f"master secret file {file_path} has no versions")
    versions: dict[int, _Version] = {}
    for key, entry in raw.items():
        try:
            v = int(key)
        except ValueError:
            raise MasterKeyError(f"master secret file {file_path}: bad version {key!r}") from None
        if v < 1 or not isinstance(entry, dict) or not isinstance(entry.get("secret"), str):
            raise MasterKeyError(f"master secret file {file_path}: malformed version {key!r}")
        secret = _parse_hex(entry["secret"], f"master secret file {file_path} (version {v})")
        versions[v] = _Version(secret, str(entry.get("created_at") or ""))
    return versions


def _check_permissions(file_path: Path) -> None:
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(file_path.stat().st_mode)
    except OSError as exc:
        raise MasterKeyError(f"cannot stat master secret {file_path}: {exc.strerror}") from None
    if mode & 0o077:
        message = (
            f"master secret {file_path} has mode {mode:04o}, readable or writable by others; "
            f"run `chmod 600 {file_path}` (or set {ENV_ALLOW_INSECURE}=1)"
        )
        if os.environ.get(ENV_ALLOW_INSECURE, "") in ("1", "true", "yes"):
            warnings.warn(message, stacklevel=3)
            log.warning("%s", message)
            return
        raise InsecureKeyFile(message)


def _write_private_tmp(target: Path, content: str) -> str:
    """Write ``content`` to a fresh 0600 temporary file next to ``target``; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _file_lock(file_path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX ``flock`` on ``<file>.lock``) around read-modify-write."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    lock_path = file_path.with_name(file_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
