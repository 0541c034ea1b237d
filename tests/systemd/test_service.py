"""The project's own units under a real systemd (252, PID 1 in throwaway namespaces).

Installed as README's "Install as a service" says (``scripts/install-service.sh``: system
user, ``/etc/streamfuse``, the model in ``/var/lib/streamfuse/model``,
``/usr/local/bin/streamfuse``), then ``systemctl enable --now``. The daemon is fed by a
video-file source and a text source. The tests of a module run in order on one booted
systemd: start, reload, a capture killed, the journal, the watchdog, stop.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamfuse.config import AlignConfig
from tests.helpers.fusion import save_tiny
from tests.helpers.media import make_video
from tests.systemd.nsboot import SystemdNS, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))]

UNIT = "streamfuse.service"
ALIGN = AlignConfig(required=("video",))
# WatchdogSec is the unit's 30 s in production; 8 s here keeps the watchdog test short. The
# supervisor pings every WatchdogSec/2, whatever the value.
WATCHDOG_S = 8
# The looping video file both units' tests capture (test_capture_unit.py uses it too).
ROOM1_VIDEO = """\
[[sources]]
name = "room1"
  [sources.video]
  device = "/opt/streamfuse/media/room1.avi"
  width = 160
  height = 120
  fps = 10
  loop = true
"""
CONFIG = "\n" + ROOM1_VIDEO + """  [sources.text]
  input = "zmq"
[align]
required = ["video"]
[fusion]
device = "cpu"
"""


def stage_media(stage: Path, config: str) -> None:
    """What the preparation script installs: config, a tiny model, a looping video file."""
    media = stage / "media"
    media.mkdir(parents=True, exist_ok=True)
    save_tiny(media / "model", ALIGN)
    make_video(media / "room1.avi", n_frames=50, fps=10, width=160, height=120)
    (media / "streamfuse.toml").write_text(config)


INSTALL = """
scripts/install-service.sh --no-deps
install -d /opt/streamfuse/media && cp /stage/media/room1.avi /opt/streamfuse/media/
install -m 0640 -g streamfuse /stage/media/streamfuse.toml /etc/streamfuse/streamfuse.toml
mkdir -p /var/lib/streamfuse && cp -r /stage/media/model /var/lib/streamfuse/model
"""
# The refusal README promises: an interpreter the service user cannot run (here: behind a
# directory only root may enter, as pyenv's under /root is) is refused before anything changes.
REFUSAL = """
install -d -m 0700 /srv/private && cp /usr/bin/python3 /srv/private/python3
set +e; scripts/install-service.sh --python /srv/private/python3 --prefix /opt/other \
  > /root/refused.txt 2>&1; echo "exit $?" >> /root/refused.txt; set -e
"""
DROPIN = f"""
mkdir -p /etc/systemd/system/{UNIT}.d
install -m 0644 systemd/gpu.conf /etc/systemd/system/{UNIT}.d/gpu.conf  # as README says
printf '[Service]\\nWatchdogSec={WATCHDOG_S}\\n' > /etc/systemd/system/{UNIT}.d/test-watchdog.conf
"""


@pytest.fixture(scope="module")
def ns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdNS]:
    scratch = tmp_path_factory.mktemp("systemd")
    stage_media(scratch / "stage", CONFIG)
    booted = SystemdNS(scratch, units=[UNIT], prepare=REFUSAL + INSTALL + DROPIN)
    try:
        yield booted
    finally:
        booted.close()


def children(ns: SystemdNS) -> dict[str, int]:
    """The supervisor's children by role (``capture video``, ``align``, ...) -> pid."""
    main = int(ns.show(UNIT, "MainPID")["MainPID"])
    out = ns.run("ps", "-o", "pid=,args=", "--ppid", str(main)).stdout
    found = {}
    for line in out.splitlines():
        pid, args = line.strip().split(None, 1)
        m = re.search(r"-m streamfuse (capture \w+|align|fuse)", args)
        if m:
            found[m.group(1)] = int(pid)
    return found


def classifications(ns: SystemdNS, n: int) -> list[dict]:
    r = ns.run("streamfuse", "tail", "--classes", "--count", str(n), "--duration", "30",
               "--config", "/etc/streamfuse/streamfuse.toml", timeout=60)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_install_refuses_an_interpreter_the_service_user_cannot_run(ns: SystemdNS) -> None:
    out = ns.run("cat", "/root/refused.txt").stdout
    assert out.rstrip().endswith("exit 2"), out
    assert "cannot be run by an unprivileged user" in out, out
    assert ns.run("test", "-e", "/opt/other").returncode == 1  # refused before any change


def test_enable_now_becomes_active_and_classifies(ns: SystemdNS) -> None:
    t0 = time.monotonic()
    ns.run("systemctl", "enable", "--now", "--no-block", UNIT, check=True)
    state = ns.wait(lambda: (s := ns.show(UNIT, "ActiveState", "StatusText", "SubState"))
                    ["ActiveState"] in ("active", "failed") and s, 60, "the unit to start")
    assert state["ActiveState"] == "active", (state, ns.journal(UNIT))
    assert "children up" in state["StatusText"] and "model " in state["StatusText"], state
    # the GPU drop-in is in force and harmless on a host without NVIDIA devices
    assert "gpu.conf" in ns.show(UNIT, "DropInPaths")["DropInPaths"]
    allowed = ns.run("systemctl", "show", UNIT, "--property=DeviceAllow").stdout
    assert "DeviceAllow=/dev/nvidiactl rw" in allowed, allowed
    got = classifications(ns, 3)
    assert len(got) == 3, ns.journal(UNIT)
    assert {c["source"] for c in got} == {"room1"} and all(c["present"]["video"] for c in got)
    # the sandbox lets frames go by reference: the capture's ring is in /dev/shm
    assert _rings(ns) == [f"room1-video-{children(ns)['capture video']}"], ns.journal(UNIT)
    assert "frame plane unavailable" not in ns.journal(UNIT)
    # a text message reaches the pipeline through the text capture's own socket
    sent = ns.run("streamfuse", "send", "hello from systemd", "--source", "room1",
                  "--config", "/etc/streamfuse/streamfuse.toml")
    assert sent.returncode == 0, sent.stderr
    print(f"active {time.monotonic() - t0:.1f} s after enable --now")


def test_reload_reports_reloading_then_ready_and_stays_active(ns: SystemdNS) -> None:
    ns.run("systemd-analyze", "log-target", "journal", check=True)
    ns.run("systemd-analyze", "log-level", "debug", check=True)
    try:
        main = ns.show(UNIT, "MainPID")["MainPID"]
        cursor = ns.run("journalctl", "-n0", "--show-cursor", "--no-pager").stdout.split("cursor: ")[-1]
        ns.run("systemctl", "reload", UNIT, check=True, timeout=60)
        ns.wait(lambda: "unchanged" in ns.journal(UNIT, f"--after-cursor={cursor.strip()}"), 20,
                "the worker to log its model id after the reload")
    finally:
        ns.run("systemd-analyze", "log-level", "info")
    pid1 = ns.run("journalctl", "_PID=1", "--no-pager", "-o", "cat",
                  f"--after-cursor={cursor.strip()}").stdout
    notes = [ln for ln in pid1.splitlines() if "Got notification message" in ln or f"PID {main}" in ln]
    seq = re.findall(r"(RELOADING=1|READY=1)", "\n".join(notes))
    assert seq[:2] == ["RELOADING=1", "READY=1"], notes[-20:]
    assert re.search(r"model [0-9a-f]{16} unchanged", ns.journal(UNIT, f"--after-cursor={cursor.strip()}"))
    s = ns.show(UNIT, "ActiveState", "MainPID", "NRestarts")
    assert (s["ActiveState"], s["MainPID"], s["NRestarts"]) == ("active", main, "0"), s


def test_killed_capture_is_restarted_by_the_supervisor_not_systemd(ns: SystemdNS) -> None:
    before = ns.show(UNIT, "MainPID", "NRestarts")
    victim = children(ns)["capture video"]
    ns.run("kill", "-KILL", str(victim), check=True)
    new = ns.wait(lambda: (p := children(ns).get("capture video")) not in (None, victim) and p, 30,
                  "the supervisor to restart the capture")
    assert new != victim
    assert ns.show(UNIT, "MainPID", "NRestarts") == before  # systemd saw nothing
    assert "capture-room1-video died (killed by SIGKILL)" in ns.journal(UNIT)
    assert len(classifications(ns, 2)) == 2
    assert _rings(ns) == [f"room1-video-{new}"]  # the killed capture's ring was removed


def test_journal_priorities_filter_warnings(ns: SystemdNS) -> None:
    warnings = ns.run("journalctl", "-u", UNIT, "-p", "warning", "--no-pager", "-o", "cat").stdout
    assert "capture-room1-video died (killed by SIGKILL)" in warnings, warnings
    assert " INFO " not in warnings and "ready: bus bound" not in warnings, warnings


def test_frozen_aligner_stops_the_watchdog_and_systemd_restarts(ns: SystemdNS) -> None:
    before = ns.show(UNIT, "MainPID", "NRestarts")
    ns.run("kill", "-STOP", str(children(ns)["align"]), check=True)
    ns.wait(lambda: ns.show(UNIT, "NRestarts")["NRestarts"] != before["NRestarts"],
            3 * WATCHDOG_S + 30, "systemd's watchdog to restart the service")
    assert "Watchdog timeout" in ns.run("journalctl", "--no-pager", "-o", "cat", "_PID=1").stdout \
        or "watchdog" in ns.journal(UNIT).lower()
    state = ns.wait(lambda: (s := ns.show(UNIT, "ActiveState", "MainPID"))["ActiveState"] == "active" and s,
                    60, "the restarted service to be active")
    assert state["MainPID"] != before["MainPID"]
    assert len(classifications(ns, 2)) == 2


def test_stop_is_clean_and_leaves_no_process(ns: SystemdNS) -> None:
    cgroup = ns.show(UNIT, "ControlGroup")["ControlGroup"]
    t0 = time.monotonic()
    ns.run("systemctl", "stop", UNIT, check=True, timeout=60)
    took = time.monotonic() - t0
    s = ns.show(UNIT, "ActiveState", "Result", "TimeoutStopUSec", "MainPID")
    assert (s["ActiveState"], s["Result"], s["MainPID"]) == ("inactive", "success", "0"), s
    assert took < 20, took  # TimeoutStopSec
    procs = ns.run("sh", "-c", f"cat /sys/fs/cgroup{shlex.quote(cgroup)}/cgroup.procs 2>/dev/null")
    assert procs.stdout.strip() == ""
    assert ns.run("pgrep", "-u", "streamfuse").stdout.strip() == ""
    assert _rings(ns) == []
    print(f"stopped in {took:.1f} s")


def _rings(ns: SystemdNS) -> list[str]:
    """The frame-plane rings in /dev/shm, without their ``streamfuse-<bus tag>-`` prefix."""
    names = ns.run("ls", "/dev/shm").stdout.split()
    return sorted(n.split("-", 2)[2] for n in names if n.startswith("streamfuse-"))
