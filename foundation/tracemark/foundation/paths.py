"""Where tracemark keeps per-user data (master secret, SQLite ledger) and caches (converted models)."""

from __future__ import annotations

import os
from pathlib import Path


def user_data_path() -> Path:
    """``$TRACEMARK_HOME`` if set, else ``$XDG_DATA_HOME/tracemark`` (``~/.local/share/tracemark``);
    not created (for readers that must not leave folders behind)."""
    home = os.environ.get("TRACEMARK_HOME", "").strip()
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "tracemark"


def user_data_dir() -> Path:
    """:func:`user_data_path`, created on demand with mode 0700."""
    path = user_data_path()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def cache_root() -> Path:
    """Folder for converted models and other caches: $TRACEMARK_CACHE_DIR, else $XDG_CACHE_HOME/tracemark."""
    explicit = os.environ.get("TRACEMARK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tracemark"
