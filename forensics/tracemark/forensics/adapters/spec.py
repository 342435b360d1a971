"""Suspect specs: ``hf:PATH | gguf:PATH | openai:URL#MODEL | tracemark:ADDR`` to an adapter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tracemark.forensics.adapters.base import SPEC_HELP, SuspectAdapter, SuspectSpecError
from tracemark.forensics.adapters.local import LocalModelSuspect
from tracemark.forensics.adapters.openai import OpenAISuspect
from tracemark.forensics.adapters.served import TracemarkSuspect

_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_suspect(spec: str, **options: Any) -> SuspectAdapter:
    """Build the adapter for ``spec`` (see module doc); ``options`` go to the adapter (budget, rate limit,
    retries, time-out, ...). :class:`SuspectSpecError` for a malformed spec or a missing model."""
    if not isinstance(spec, str) or not spec.strip():
        raise SuspectSpecError(f"empty suspect spec; use {SPEC_HELP}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SuspectSpecError(f"suspect spec {spec!r} has no kind prefix; use {SPEC_HELP}")
    kind = kind.lower()
    if kind == "hf":
        path = Path(rest).expanduser()
        if not path.is_dir():
            raise SuspectSpecError(f"hf:{rest}: no model folder at {path}")
        if not (path / "config.json").is_file():
            raise SuspectSpecError(f"hf:{rest}: {path} has no config.json (not a transformers model folder)")
        return LocalModelSuspect(spec, path, gguf=False, **options)
    if kind == "gguf":
        path = Path(rest).expanduser()
        if path.suffix.lower() != ".gguf":
            raise SuspectSpecError(f"gguf:{rest}: expected a .gguf file")
        if not path.is_file():
            raise SuspectSpecError(f"gguf:{rest}: no such file")
        return LocalModelSuspect(spec, path, gguf=True, **options)
    if kind == "openai":
        url, hash_sep, model = rest.partition("#")
        if not hash_sep or not model.strip():
            raise SuspectSpecError(f"openai spec {spec!r} needs a model name: openai:URL#MODEL")
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise SuspectSpecError(f"openai spec {spec!r}: URL must start with http:// or https://")
        if not url.endswith("/v1"):
            url += "/v1"
        return OpenAISuspect(spec, url, model.strip(), **options)
    if kind == "tracemark":
        addr = rest.strip()
        if not _ADDR.match(addr):
            raise SuspectSpecError(f"tracemark spec {spec!r}: expected tracemark:HOST:PORT")
        if not 0 < int(addr.rsplit(":", 1)[1]) < 65536:
            raise SuspectSpecError(f"tracemark spec {spec!r}: port out of range")
        return TracemarkSuspect(spec, addr, **options)
    raise SuspectSpecError(f"unknown suspect kind {kind!r} in {spec!r}; use {SPEC_HELP}")
