"""Suspect specs: ``hf:PATH | gguf:PATH | openai:URL#MODEL | tracemark:ADDR`` to an adapter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tracemark.forensics.adapters.base import SPEC_HELP, SuspectAdapter, SuspectSpecError
from tracemark.forensics.adapters.local import LocalModelSuspect
from tracemark.forensics.adapters.openai import OpenAISuspect
from tracemark.forensics.adapters.policy import SuspectPolicy, normalize_endpoint
from tracemark.forensics.adapters.served import TracemarkSuspect

_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_suspect(spec: str, *, policy: SuspectPolicy | None = None, **options: Any) -> SuspectAdapter:
    """Build the adapter for ``spec`` (see module doc); ``options`` go to the adapter (budget, rate limit,
    retries, time-out, ...). :class:`SuspectSpecError` for a malformed spec or a missing model.

    With a ``policy`` (the server), only allowlisted suspects are built (:class:`SuspectNotAllowed`
    otherwise, before any connection), with the credentials the policy names and connections pinned to
    checked addresses; without one (the command line), any suspect, with credentials from
    ``$TRACEMARK_SUSPECT_API_KEY`` / ``$TRACEMARK_TOKEN``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SuspectSpecError(f"empty suspect spec; use {SPEC_HELP}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SuspectSpecError(f"suspect spec {spec[:200]!r} has no kind prefix; use {SPEC_HELP}")
    kind = kind.lower()
    if kind in ("hf", "gguf"):
        if policy is not None:
            return LocalModelSuspect(spec, policy.local_model(kind, rest), gguf=kind == "gguf", **options)
        return LocalModelSuspect(spec, _local_path(kind, rest), gguf=kind == "gguf", **options)
    if kind == "openai":
        url, hash_sep, model = rest.partition("#")
        if not hash_sep or not model.strip():
            raise SuspectSpecError(f"openai spec {spec[:200]!r} needs a model name: openai:URL#MODEL")
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise SuspectSpecError(f"openai spec {spec[:200]!r}: URL must start with http:// or https://")
        if not url.endswith("/v1"):
            url += "/v1"
        if policy is not None:
            endpoint = normalize_endpoint(url)
            policy.check_endpoint(endpoint)
            return OpenAISuspect(
                spec,
                endpoint,
                model.strip(),
                api_key=policy.credential(endpoint),
                connect_check=policy.checked_address,
                **options,
            )
        return OpenAISuspect(spec, url, model.strip(), **options)
    if kind == "tracemark":
        addr = rest.strip()
        if not _ADDR.match(addr):
            raise SuspectSpecError(f"tracemark spec {spec[:200]!r}: expected tracemark:HOST:PORT")
        if not 0 < int(addr.rsplit(":", 1)[1]) < 65536:
            raise SuspectSpecError(f"tracemark spec {spec[:200]!r}: port out of range")
        if policy is not None:
            endpoint = normalize_endpoint(f"tracemark://{addr}")
            pinned = policy.check_endpoint(endpoint)
            port = int(addr.rsplit(":", 1)[1])
            return TracemarkSuspect(
                spec, addr, token=policy.credential(endpoint), connect_to=(pinned, port), **options
            )
        return TracemarkSuspect(spec, addr, **options)
    raise SuspectSpecError(f"unknown suspect kind {kind[:40]!r} in {spec[:200]!r}; use {SPEC_HELP}")


def _local_path(kind: str, rest: str) -> Path:
    """The command line's checks of a local suspect path (an operator on their own machine: detailed)."""
    path = Path(rest).expanduser()
    if kind == "gguf":
        if path.suffix.lower() != ".gguf":
            raise SuspectSpecError(f"gguf:{rest}: expected a .gguf file")
        if not path.is_file():
            raise SuspectSpecError(f"gguf:{rest}: no such file")
        return path
    if not path.is_dir():
        raise SuspectSpecError(f"hf:{rest}: no model folder at {path}")
    if not (path / "config.json").is_file():
        raise SuspectSpecError(f"hf:{rest}: {path} has no config.json (not a transformers model folder)")
    return path
