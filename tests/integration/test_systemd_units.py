"""The unit files pass `systemd-analyze verify` silently and score "OK" on security."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"streamfuse.service": "streamfuse.service",
         "streamfuse-capture@.service": "streamfuse-capture@room1-video.service"}
INSTALLED = "/usr/local/bin/streamfuse"  # where README's install steps link the command

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def _copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at a command that exists here (verify checks that)."""
    exe = Path(sys.executable).parent / "streamfuse"
    text = (ROOT / "systemd" / name).read_text()
    assert INSTALLED in text
    out = tmp_path / UNITS[name]
    out.write_text(text.replace(INSTALLED, str(exe if exe.exists() else sys.executable)))
    return out


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_verifies_without_output(tmp_path: Path, name: str) -> None:
    unit = _copy(tmp_path, name)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_security_score_is_ok(tmp_path: Path, name: str) -> None:
    unit = _copy(tmp_path, name)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5 and m.group(2) == "OK", m.group(0)
    assert r.returncode == 0


def test_service_declares_the_contract() -> None:
    text = (ROOT / "systemd" / "streamfuse.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "SupplementaryGroups=video audio",
                 "StateDirectory=streamfuse", "RuntimeDirectory=streamfuse",
                 "ConfigurationDirectory=streamfuse", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^User=streamfuse$", text, re.M)


def _with_dropin(tmp_path: Path, dropin: str) -> Path:
    """The daemon's unit with one of the shipped drop-ins beside it, where verify reads it."""
    unit = _copy(tmp_path, "streamfuse.service")
    d = tmp_path / "streamfuse.service.d"
    d.mkdir()
    (d / dropin).write_text((ROOT / "systemd" / dropin).read_text())
    return unit


def test_gpu_dropin_verifies_and_keeps_the_score(tmp_path: Path) -> None:
    unit = _with_dropin(tmp_path, "gpu.conf")
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m and float(m.group(1)) <= 2.5, r.stdout[-500:]
    text = (ROOT / "systemd" / "gpu.conf").read_text()
    assert "DeviceAllow=char-nvidia-frontend rw" in text and "DeviceAllow=char-nvidia-uvm rw" in text


def _systemd_version() -> int:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"systemd (\d+)", out)
    return int(m.group(1)) if m else 0


def test_notify_reload_dropin_needs_only_a_newer_systemd(tmp_path: Path) -> None:
    """On systemd >= 253 it verifies silently; older ones know every line but the type."""
    unit = _with_dropin(tmp_path, "notify-reload.conf")
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    if _systemd_version() >= 253:
        assert complaints == []
    else:
        assert len(complaints) == 1 and "Failed to parse service type" in complaints[0], complaints
