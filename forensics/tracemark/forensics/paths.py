"""Where tracemark keeps per-user data (master secret, SQLite ledger)."""

from __future__ import annotations

import os
from pathlib import Path


def user_data_dir() -> Path:
    """``$TRACEMARK_HOME`` if set, else ``$XDG_DATA_HOME/tracemark`` (``~/.local/share/tracemark``).

    The folder is created on demand with mode 0700.
    """
    home = os.environ.get("TRACEMARK_HOME", "").strip()
    if home:
        path = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "").strip()
        base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
        path = base / "tracemark"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
