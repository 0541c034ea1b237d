"""Helpers for supervisor tests: start the real Supervisor over stand-in children."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers.proc import PYTHON

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
CAPTURE, ALIGNER, WORKER, RECORDER = 0, 1, 2, 3


class StandinDaemon:
    def __init__(self, bus_env: Any, children: list[dict], *, policy: dict | None = None,
                 env: dict[str, str] | None = None) -> None:
        root: Path = bus_env.root
        self.events = root / "events.log"
        self.stderr_path = root / "daemon.log"
        table = root / "table.json"
        table.write_text(json.dumps({"children": children, "events": str(self.events),
                                     "policy": policy or {}}))
        import os

        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([PYTHON, str(HELPERS / "standin_daemon.py"), str(bus_env.path), str(table)],
                                         env={**os.environ, **(env or {})}, stderr=err)

    def lines(self) -> list[list[str]]:
        if not self.events.exists():
            return []
        return [ln.split() for ln in self.events.read_text().splitlines() if ln.strip()]

    def pids(self, name: str, what: str = "start") -> list[int]:
        return [int(p) for n, w, p in self.lines() if n == name and w == what]

    def log(self) -> str:
        return self.stderr_path.read_text()


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        import time

        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.received
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append((time.monotonic(), fields))

    def times(self, key: str) -> list[float]:
        return [t for t, f in self.drain() if key in f]

    def close(self) -> None:
        self.sock.close()



