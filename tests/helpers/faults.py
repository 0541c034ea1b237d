"""Helpers for the fault suite (tests/faults): a real ``streamfuse run`` watched from outside.

The daemon's stderr goes to a file the test reads; a bound AF_UNIX datagram socket stands
in for systemd and is drained on every poll (its queue holds about ten datagrams, and a
full queue loses later messages); metrics are read as Prometheus text over HTTP, the way
a scraper sees them (tests/helpers/prom.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamfuse.config import AlignConfig
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for
from tests.integration.supervised import NotifySocket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(bus_env: Any, extra: str,
            command: tuple[str, ...] = ("run",)) -> subprocess.CompletedProcess:
    """Write ``extra`` into the test's config and run ``streamfuse COMMAND...`` on it."""
    bus_env.write(extra)
    return run_streamfuse([*command, "--config", str(bus_env.path)], timeout=60)


def last_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class RunningDaemon:
    """``streamfuse run`` on ``bus_env``'s config with a tiny model and a notify socket."""

    def __init__(self, bus_env: Any, extra: str = "", *, watchdog_usec: int | None = None,
                 env: dict[str, str] | None = None, align: AlignConfig | None = None) -> None:
        from tests.helpers.fusion import save_tiny

        save_tiny(bus_env.root / "model", align or AlignConfig())
        bus_env.write(extra)
        self.log_path = bus_env.root / "daemon.log"
        self.notify = NotifySocket(bus_env.root / "notify.sock")
        full = {"NOTIFY_SOCKET": str(self.notify.path), **(env or {})}
        if watchdog_usec is not None:
            full["WATCHDOG_USEC"] = str(watchdog_usec)
        with open(self.log_path, "w") as err:
            self.proc = streamfuse(["run", "--config", str(bus_env.path)], env=full, stderr=err)

    def log(self) -> str:
        return Path(self.log_path).read_text()

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()[-3000:]}")

    def times(self, key: str) -> list[float]:
        """Arrival times (time.monotonic) of every notify message holding ``key``."""
        self._alive()
        return self.notify.times(key)

    def wait_ready(self, timeout: float = 90) -> float:
        return wait_for(lambda: (self.times("READY") or [0.0])[0], timeout=timeout, what="READY=1")

    def wait_log(self, text: str, timeout: float = 30, after: int = 0) -> int:
        """Wait until ``text`` is in the log past offset ``after``; returns where it ends."""
        def seen() -> int:
            self._alive()
            self.notify.drain()  # keep systemd's stand-in queue from filling meanwhile
            i = self.log().find(text, after)
            return i + len(text) if i >= 0 else 0
        return int(wait_for(seen, timeout=timeout, interval=0.1, what=repr(text)))

    def pump(self, seconds: float) -> None:
        """Drain the notify socket for ``seconds`` (the test's own pacing)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.times("WATCHDOG")
            time.sleep(0.1)

    def close(self) -> int:
        try:
            return stop(self.proc, timeout=20)
        finally:
            self.notify.close()


@contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (needs root); the test is skipped where mounting fails."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Take all but ``leave_bytes`` of ``disk``'s free space with one file."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler


def recorded(paths: list[Path]) -> dict[Path, int]:
    """Messages each recording holds, read as any reader would (an unreadable file holds 0)."""
    from streamfuse.record.reader import RecordingError, read_raw

    out = {}
    for p in paths:
        try:
            out[p] = sum(1 for _ in read_raw([p]))
        except RecordingError:
            out[p] = 0
    return out
