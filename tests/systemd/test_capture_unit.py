"""The edge host's unit, ``streamfuse-capture@.service``, under a real systemd.

One instance (``room1-video``: a looping video file) publishes to a broker elsewhere in the
namespace (``streamfuse broker`` as a transient unit, over loopback TCP: the shape of an
edge host and a GPU host, without the CurveZMQ keys loopback does not need).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.systemd.nsboot import SystemdNS, unavailable
from tests.systemd.test_service import INSTALL, ROOM1_VIDEO, stage_media

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))]

UNIT = "streamfuse-capture@room1-video.service"
EDGE = """
[bus]
input = "tcp://127.0.0.1:5560"
""" + ROOM1_VIDEO + """[metrics]
listen = ""
"""
BROKER = """
[bus]
input = "tcp://127.0.0.1:5560"
output = "tcp://127.0.0.1:5561"
[metrics]
listen = ""
"""
PREPARE = INSTALL + f"""
printf '%s' '{BROKER}' > /etc/streamfuse/broker.toml
install -d /etc/streamfuse/capture
printf 'STREAM=video\\nSOURCE=room1\\n' > /etc/streamfuse/capture/room1-video.env
"""
# One frame from the broker's output, its topic printed: a subscriber on the "GPU host".
RECEIVE = """
import sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.RCVTIMEO, 30000)
s.connect("tcp://127.0.0.1:5561")
s.subscribe(b"room1/video")
print(s.recv_multipart()[0].decode())
"""


@pytest.fixture(scope="module")
def ns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdNS]:
    scratch = tmp_path_factory.mktemp("systemd-capture")
    stage_media(scratch / "stage", EDGE)
    booted = SystemdNS(scratch, units=["streamfuse-capture@.service"], prepare=PREPARE)
    try:
        booted.run("systemd-run", "--unit=sf-broker", "--property=User=streamfuse",
                   "/usr/local/bin/streamfuse", "broker", "--config", "/etc/streamfuse/broker.toml",
                   check=True)
        yield booted
    finally:
        booted.close()


def frame_topic(ns: SystemdNS) -> str:
    return ns.run("/opt/streamfuse/venv/bin/python", "-c", RECEIVE, timeout=45).stdout.strip()


def test_capture_unit_publishes_to_a_remote_broker(ns: SystemdNS) -> None:
    ns.run("systemctl", "enable", "--now", UNIT, check=True, timeout=60)
    state = ns.wait(lambda: (s := ns.show(UNIT, "ActiveState"))["ActiveState"] != "activating" and s,
                    30, "the capture to start")
    assert state["ActiveState"] == "active", ns.journal(UNIT)
    assert frame_topic(ns) == "room1/video", ns.journal(UNIT)
    assert ns.show(UNIT, "User")["User"] == "streamfuse"


def test_killed_capture_is_restarted_by_systemd(ns: SystemdNS) -> None:
    before = ns.show(UNIT, "MainPID", "NRestarts")
    ns.run("kill", "-KILL", before["MainPID"], check=True)
    after = ns.wait(lambda: (s := ns.show(UNIT, "MainPID", "NRestarts", "ActiveState"))["NRestarts"]
                    != before["NRestarts"] and s["ActiveState"] == "active" and s, 30,
                    "systemd to restart the capture")
    assert after["MainPID"] != before["MainPID"]
    assert frame_topic(ns) == "room1/video"


def test_capture_stops_cleanly(ns: SystemdNS) -> None:
    t0 = time.monotonic()
    ns.run("systemctl", "stop", UNIT, check=True, timeout=30)
    s = ns.show(UNIT, "ActiveState", "Result", "MainPID")
    assert (s["ActiveState"], s["Result"], s["MainPID"]) == ("inactive", "success", "0"), s
    assert time.monotonic() - t0 < 5  # TimeoutStopSec
    assert "capture" not in ns.run("pgrep", "-a", "-u", "streamfuse").stdout
