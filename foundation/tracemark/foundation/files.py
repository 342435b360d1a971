"""Reading the files users write (TOML settings, tokens), with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tracemark.foundation.errors import InvalidInput


def read_toml(path: Path, *, what: str, error: type[InvalidInput] = InvalidInput) -> dict[str, Any]:
    """The TOML document at ``path``; a missing or malformed file raises ``error`` naming ``what``."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
