"""Signal handling: handlers only set events; loops poll them with a timeout."""

from __future__ import annotations

import signal
import threading

# Set once a SIGINT (Ctrl-C) has been received: a command that stops cleanly on it still
# exits 130, as a shell expects of an interrupted command.
interrupted = threading.Event()


class Signals:
    """``stop`` is set on SIGTERM/SIGINT, ``reload`` on SIGHUP."""

    def __init__(self, *, reload: bool = False) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if reload:
            signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            interrupted.set()
        self.stop.set()

    def _on_reload(self, signum: int, frame: object) -> None:
        self.reload.set()
