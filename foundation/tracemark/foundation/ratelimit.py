"""A logger wrapper that a flood of bad requests cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class RateLimitedLog:
    """Log at most ``per_window`` lines per ``window_s`` seconds; the first line of the next window says
    how many were held back."""

    def __init__(self, logger: logging.Logger, *, per_window: int = 1, window_s: float = 60.0) -> None:
        self.logger, self.per_window, self.window_s = logger, per_window, window_s
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._logged = self._held = 0

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` at ``level`` unless this window is full; True when logged."""
        now = time.monotonic()
        with self._lock:
            if now - self._window_start >= self.window_s:
                held, self._held, self._logged, self._window_start = self._held, 0, 0, now
            else:
                held = 0
            if self._logged >= self.per_window:
                self._held += 1
                return False
            self._logged += 1
        if held:
            self.logger.log(level, message + " (%d more held back by the rate limit)", *args, held)
        else:
            self.logger.log(level, message, *args)
        return True

    def info(self, message: str, *args: Any) -> bool:
        return self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: Any) -> bool:
        return self.log(logging.WARNING, message, *args)
