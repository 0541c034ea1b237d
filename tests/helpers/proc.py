"""Test helpers: start streamfuse processes, wait on readiness (never on time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PYTHON = sys.executable


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def streamfuse(args: Sequence[str], *, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    """Start ``python -m streamfuse ARGS`` as a real child process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([PYTHON, "-m", "streamfuse", *args], env=full_env, **kw)


def broker_logged(config: Path, log: Path) -> subprocess.Popen:
    """``streamfuse broker --config CONFIG`` as a child, its stderr written to ``log``."""
    with open(log, "w") as err:
        return streamfuse(["broker", "--config", str(config)], stderr=err)


def run_streamfuse(args: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None,
                   input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PYTHON, "-m", "streamfuse", *args], env=full_env, timeout=timeout,
                          capture_output=True, text=True, input=input)


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGTERM, wait, then SIGKILL (two-phase stop). Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def ipc_ready(endpoint: str) -> bool:
    return Path(endpoint.removeprefix("ipc://")).exists()
