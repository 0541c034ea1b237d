"""``fusion.device`` with real processes: a CUDA device that is not there stops ``streamfuse
run`` and ``streamfuse fuse`` at start (exit 2, one line naming the key); ``auto`` says which
device it chose, in the worker's log, in a metric and in the supervisor's ``STATUS=``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import prom
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for
from tests.integration.supervised import NotifySocket

pytestmark = pytest.mark.slow


def _missing_cuda() -> str:
    """A CUDA device this machine lacks: any on a machine without one, else one past the last."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["run", "fuse"])
def test_a_missing_cuda_device_is_a_config_error_at_start(bus_env, command: str) -> None:
    spec = _missing_cuda()
    r = run_streamfuse([command, "--config", str(bus_env.path)], timeout=120,
                       env={"STREAMFUSE_FUSION_DEVICE": spec})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"streamfuse {command}: fusion.device: {spec!r}"), lines[0]
    # refused before anything started: no bus, no lock, no child
    assert not list(bus_env.run_dir.iterdir())


def test_auto_reports_the_chosen_device(bus_env) -> None:
    from streamfuse.config import AlignConfig
    from tests.helpers.fusion import save_tiny

    chosen = "cuda:0" if torch.cuda.is_available() else "cpu"
    model_id = save_tiny(bus_env.root / "model", AlignConfig())
    port = _free_port()
    bus_env.write(f'[metrics]\nlisten = "127.0.0.1:{port}"\n[fusion]\ndevice = "auto"\n')
    ns = NotifySocket(bus_env.root / "notify.sock")
    log = bus_env.root / "daemon.log"
    with open(log, "w") as err:
        proc = streamfuse(["run", "--config", str(bus_env.path)], stderr=err,
                          env={"NOTIFY_SOCKET": str(ns.path)})
    try:
        wait_for(lambda: ns.times("READY") or proc.poll() is not None, timeout=90, what="READY=1")
        assert proc.poll() is None, log.read_text()[-3000:]
        ready = next(f for _, f in ns.received if "READY" in f)
        assert f"model {model_id} on {chosen};" in ready["STATUS"], ready
        info = {dict(labels)["pid"]: v for (name, labels), v in prom.scrape(port).items()
                if name == "streamfuse_worker_device_info" and ("device", chosen) in labels}
        assert len(info) == 1 and list(info.values()) == [1.0], info  # one worker, on that device
        assert all(pid.isdigit() for pid in info), info
        starts = [ln for ln in log.read_text().splitlines() if "fusion worker up" in ln]
        assert len(starts) == 1 and f"device {chosen} (" in starts[0], starts
        # A reload asking for a device that is not there is refused; the worker keeps serving.
        worker = re.search(r"worker-0 started \(pid (\d+)\)", log.read_text())
        assert worker
        bus_env.write(f'[metrics]\nlisten = "127.0.0.1:{port}"\n[fusion]\n'
                      f'device = "{_missing_cuda()}"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: config rejected" in log.read_text(), timeout=60,
                 what="the reload to be refused")
        refusal = [ln for ln in log.read_text().splitlines() if "reload: config rejected" in ln]
        assert "fusion.device" in refusal[0]
        assert os.path.exists(f"/proc/{worker.group(1)}")
        assert proc.poll() is None
    finally:
        code = stop(proc, timeout=15)
        ns.close()
    assert code == 0, Path(log).read_text()[-3000:]


def test_the_device_check_alone() -> None:
    """``python -m streamfuse.commands.device``: what ``streamfuse run`` asks before it starts."""
    import sys

    r = subprocess.run([sys.executable, "-m", "streamfuse.commands.device", "auto"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() in ("cpu", "cuda:0"), r
    r = subprocess.run([sys.executable, "-m", "streamfuse.commands.device", _missing_cuda()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("fusion.device: "), r
