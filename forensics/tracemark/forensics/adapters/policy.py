"""Which suspects a server may query: allowlisted endpoints and model roots, checked before any connection.

A caller of ``ForensicsService.Investigate`` names a suspect, but the server only queries what its operator
configured (``[forensics]``): OpenAI-compatible base URLs and ``tracemark://HOST:PORT`` addresses listed in
``endpoints``, and model folders or ``.gguf`` files inside ``model_roots``. Credentials come from the
environment variable the operator named for each endpoint, never from the server's own variables.

Checks, all before the first byte is sent to the suspect:

* the endpoint, normalised (scheme, lower-case host, explicit port, path ending ``/v1``), must equal an
  allowlisted one (no prefix matching, no user-info, query or fragment);
* every address its host resolves to must be an ordinary unicast address: link-local (169.254.0.0/16,
  fe80::/10), cloud metadata, multicast, unspecified and reserved addresses are refused even when
  allowlisted; a host *name* (other than ``localhost``) that resolves to loopback is refused too, so a
  suspect who controls its DNS cannot point the server at its own local services;
* the connection then goes to the address that was checked (HTTP: a connect-time re-check in the client's
  network layer, see :mod:`.openai`; gRPC: the checked IP literal), so a DNS answer that changes between
  the check and the connection (rebinding) gains nothing; redirects are never followed;
* a local path is resolved (symlinks included) and must lie inside a root; a path outside the roots, a
  missing path and a path that holds no model get one and the same message, so errors reveal nothing
  about what exists on the server.

The command line (an operator on their own machine) builds adapters without a policy and may query any
suspect.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tracemark.forensics.adapters.base import SuspectSpecError, SuspectUnavailable
from tracemark.foundation.errors import PermissionDenied

NOT_ALLOWED = "suspect not in [forensics] allowlist"
LOCAL_NOT_ALLOWED = f"{NOT_ALLOWED}: no model at that path inside [forensics] model_roots"

#: Cloud instance-metadata addresses that are not link-local (AWS IPv6, Alibaba, Azure wire server).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

Resolver = Callable[[str, int], list[str]]


class SuspectNotAllowed(PermissionDenied):
    """The server's ``[forensics]`` configuration does not allow querying this suspect."""


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_endpoint(url: str) -> str:
    """The canonical form of an endpoint: ``scheme://host:port/path`` for an OpenAI-compatible base URL (the
    path ending in ``/v1``, as :func:`parse_suspect` completes it) or ``tracemark://host:port``."""
    text = url.strip() if isinstance(url, str) else ""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise SuspectSpecError(f"endpoint {text[:200]!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "tracemark") or not parts.hostname:
        raise SuspectSpecError(
            f"endpoint {text[:200]!r}: expected http(s)://HOST[:PORT]/PATH or tracemark://HOST:PORT"
        )
    if "@" in parts.netloc or parts.query or parts.fragment or any(c.isspace() for c in text):
        raise SuspectSpecError(f"endpoint {text[:200]!r}: no user-info, query, fragment or spaces allowed")
    host = parts.hostname.lower()
    if scheme == "tracemark":
        if port is None or parts.path not in ("", "/"):
            raise SuspectSpecError(f"endpoint {text[:200]!r}: expected tracemark://HOST:PORT")
        return f"tracemark://{_host_port(host, port)}"
    port = port or (443 if scheme == "https" else 80)
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{scheme}://{_host_port(host, port)}{path}"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forbidden_reason(address: str) -> str | None:
    """Why the server must never connect to ``address`` (an IP literal), or None."""
    ip = _ip(address)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv6Address) and (ip.sixtofour or ip.teredo or ip.is_site_local):
        # 6to4 and Teredo embed an IPv4 address (metadata or loopback would pass unseen); no real suspect
        # endpoint needs them, nor the deprecated site-local range.
        return "a 6to4, Teredo or site-local IPv6 address"
    reserved = ip.is_reserved and not ip.is_loopback  # ::1 is inside the reserved ::/8
    if ip.is_multicast or ip.is_unspecified or reserved or (ip.version == 4 and ip in _THIS_NETWORK):
        return "a multicast, unspecified or reserved address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SuspectPolicy:
    """The suspects a server may query (see module doc). An empty policy allows nothing."""

    endpoints: frozenset[str] = frozenset()
    model_roots: tuple[Path, ...] = ()
    credentials: Mapping[str, str] = field(default_factory=dict)  # endpoint -> env var NAME
    resolver: Resolver = system_resolver

    @classmethod
    def build(
        cls,
        endpoints: Iterable[str] = (),
        model_roots: Iterable[str | os.PathLike] = (),
        credentials: Mapping[str, str] | None = None,
        *,
        resolver: Resolver = system_resolver,
    ) -> SuspectPolicy:
        """Normalise and validate a configuration (:class:`SuspectSpecError` for a bad entry)."""
        allowed = frozenset(normalize_endpoint(e) for e in endpoints)
        creds = {}
        for endpoint, env_name in (credentials or {}).items():
            key = normalize_endpoint(endpoint)
            if key not in allowed:
                raise SuspectSpecError(f"credentials for {endpoint!r}, which is not in endpoints")
            if not isinstance(env_name, str) or not _ENV_NAME.match(env_name):
                raise SuspectSpecError(f"credentials for {endpoint!r} must name an environment variable")
            creds[key] = env_name
        roots = tuple(Path(os.path.realpath(Path(r).expanduser())) for r in model_roots)
        return cls(endpoints=allowed, model_roots=roots, credentials=creds, resolver=resolver)

    # --- local models -----------------------------------------------------------------------------
    def local_model(self, kind: str, given: str) -> Path:
        """The real path of the ``hf:`` folder / ``gguf:`` file ``given``, if it lies inside a model root
        and holds a model; otherwise :class:`SuspectNotAllowed` with one message for every failure."""
        try:
            real = Path(os.path.realpath(Path(given).expanduser()))
            inside = any(real.is_relative_to(root) for root in self.model_roots)
            if kind == "gguf":
                usable = real.suffix.lower() == ".gguf" and real.is_file()
            else:
                usable = real.is_dir() and (real / "config.json").is_file()
        except (OSError, ValueError, RuntimeError):
            inside = usable = False
        if not (inside and usable):
            raise SuspectNotAllowed(LOCAL_NOT_ALLOWED)
        return real

    # --- remote endpoints -------------------------------------------------------------------------
    def check_endpoint(self, endpoint: str) -> str:
        """``endpoint`` (normalised) if allowlisted and every address it resolves to may be contacted;
        returns the address to connect to. :class:`SuspectNotAllowed` otherwise."""
        if endpoint not in self.endpoints:
            raise SuspectNotAllowed(f"{NOT_ALLOWED} (endpoints)")
        parts = urlsplit(endpoint)
        return self.checked_address(parts.hostname or "", parts.port or 0)

    def checked_address(self, host: str, port: int) -> str:
        """Resolve ``host`` now and return one of its addresses, refusing the host if any address it
        resolves to is forbidden (see module doc). Used again at connect time."""
        literal = _is_ip(host)
        addresses = [host] if literal else self.resolver(host, port)
        if not addresses:
            raise SuspectUnavailable("suspect endpoint host does not resolve")
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is None and not literal and host != "localhost" and _ip(address).is_loopback:
                reason = "a loopback address (allowlist it as an IP literal or localhost)"
            if reason is not None:
                raise SuspectNotAllowed(f"suspect endpoint resolves to {reason}; refused")
        return addresses[0]

    def credential(self, endpoint: str) -> str:
        """The secret for ``endpoint`` from the environment variable named in ``credentials`` ("" if none)."""
        name = self.credentials.get(endpoint)
        return os.environ.get(name, "").strip() if name else ""
