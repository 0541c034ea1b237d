"""The systemd notify protocol, spoken directly (no libsystemd).

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket)
and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). A
notification is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of ``KEY=VALUE`` lines:
``READY=1``, ``WATCHDOG=1``, ``STATUS=...``, ``STOPPING=1``, ``RELOADING=1``.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("streamfuse.notify")


class Notifier:
    """Send notifications to ``NOTIFY_SOCKET``; silent when it is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._addr = addr
        self._sock: socket.socket | None = None
        if addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block: a reader that stops reading (its queue holds ~10
            # datagrams) must not freeze the supervisor's loop.
            self._sock.setblocking(False)
        self._failing = False
        self.watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds (systemd's advice), or None without a watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (``send(READY=1, STATUS="up")``); False if it failed."""
        if self._sock is None:
            return False
        msg = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self._addr)
        except OSError as e:
            # systemd gone or its queue full: the service keeps running (the
            # watchdog, if any, is what notices). One line per failing spell.
            if not self._failing:
                log.warning("notify %s failed: %s (further failures not logged until one succeeds)",
                            ",".join(fields), e)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(v: str) -> str:
    return v.replace("\n", " ")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not raw:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were exec'd by a wrapper)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    return usec if usec > 0 else None
