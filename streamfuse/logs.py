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
