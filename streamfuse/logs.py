"""Logging set-up: one line per event on stderr (journald picks it up).

When stderr is a journald stream, every line starts with its syslog priority
(``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug; sd-daemon(3)), so
``journalctl -p warning`` shows warnings and worse; journald strips the prefix and
adds its own timestamps. Children inherit stderr, so the same test holds for them.
Anywhere else (a terminal, a file, a pipe, CI) lines are plain, with a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# syslog priorities (sd-daemon(3)'s SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG; SD_CRIT)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def parse_level(text: str, where: str) -> int:
    """The logging level named by ``text`` (any case); ``ValueError`` naming ``where``
    (the flag or variable it came from) for anything else."""
    name = text.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"{where}: expected one of {', '.join(LEVELS)}, got {text!r}")
    return int(getattr(logging, name))


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journald stream that systemd announced in
    ``JOURNAL_STREAM=<device>:<inode>``. Comparing with fstat rather than trusting the
    variable keeps a command run from a service's shell (stderr redirected to a file,
    variable inherited) from writing priority prefixes into the file."""
    env = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record (tracebacks too) with its syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup(name: str = "streamfuse", level: str | None = None) -> None:
    """Log to stderr at ``level`` (else ``$STREAMFUSE_LOG``, else INFO). Raises
    ``ValueError`` naming ``--log-level`` or ``STREAMFUSE_LOG`` for an unknown level."""
    if level is not None:
        lvl = parse_level(level, "--log-level")
    else:
        lvl = parse_level(os.environ.get("STREAMFUSE_LOG", "INFO"), "STREAMFUSE_LOG")
    handler = logging.StreamHandler(sys.stderr)
    fd = _fileno(sys.stderr)
    if fd is not None and stderr_is_journal(fd=fd):
        handler.setFormatter(JournalFormatter("%(name)s %(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=lvl, handlers=[handler])


def _fileno(stream: object) -> int | None:
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None  # replaced by an object without a descriptor (a test's capture)


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
