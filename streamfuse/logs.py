"""Logging set-up: one line per event on stderr (journald picks it up)."""

from __future__ import annotations

import logging
import os
import sys


def setup(name: str = "streamfuse", level: str | None = None) -> None:
    level = level or os.environ.get("STREAMFUSE_LOG", "INFO")
    # Under systemd, journald adds its own timestamps.
    fmt = "%(name)s %(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=fmt)


class Throttled:
    """Log at most one line per key every ``every_ns``; what is held back is counted
    and reported with the next line of that key, so hostile input cannot flood the log.

    Pure: the caller passes ``now_ns`` (only clock.py reads clocks).
    """

    def __init__(self, logger: logging.Logger, every_ns: int, max_keys: int = 1024) -> None:
        self.logger = logger
        self.every_ns = every_ns
        self.max_keys = max_keys
        self._next: dict[object, int] = {}
        self._held: dict[object, int] = {}

    def log(self, key: object, now_ns: int, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` now or count it; returns whether it was logged."""
        if now_ns < self._next.get(key, now_ns):
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._next) >= self.max_keys and key not in self._next:
            self._next.clear()  # many keys (hostile topic names): forget, stay bounded
            self._held.clear()
        held = self._held.pop(key, 0)
        self._next[key] = now_ns + self.every_ns
        if held:
            msg += " (%d more like it not logged)"
            args = (*args, held)
        self.logger.log(level, msg, *args)
        return True
