"""Ctrl-C of a foreground command: exit 130, no traceback, the work finished cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streamfuse.record import reader

ROOT = Path(__file__).resolve().parents[2]


def test_sigint_of_a_foreground_command_exits_130(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\ninput = "ipc://{tmp_path}/in"\noutput = "ipc://{tmp_path}/out"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMFUSE_LOG": "INFO"}
    argv = [sys.executable, "-m", "streamfuse", "record", "--out", str(tmp_path / "r"),
            "--config", str(cfg)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it records: its signal handlers are in place
        if "recording topics" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130, rest
    assert "Traceback" not in rest
    (out,) = (tmp_path / "r").glob("*.mcap")
    assert reader.inspect_file(out).complete  # the recorder still wrote its summary
