"""Crash safety of the frame plane in a real daemon (MJPEG camera over HTTP, capture,
aligner, worker, broker in the supervisor): SIGKILL of the capture, the aligner and the
worker (which reads the slots) leaves no segment behind once the supervisor has restarted
them, video windows come back, a stale segment from an earlier run is reclaimed at start, and a stopped daemon
leaves nothing in shared memory."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import signal
import time
from pathlib import Path

import pytest
import zmq

from streamfuse.config import AlignConfig
from streamfuse.frameplane import ring
from streamfuse.wire import topics
from tests.helpers.mjpeg import MjpegCamera
from tests.helpers.proc import stop, streamfuse, wait_for

pytestmark = pytest.mark.slow
SOURCE = "room1"
ALIGN = AlignConfig(window_ms=400, hop_ms=200, required=["video"])


def _pids(log: Path, child: str) -> list[int]:
    return [int(p) for p in re.findall(rf"{child} started \(pid (\d+)\)", log.read_text())]


def _dead_pid() -> int:
    p = mp.get_context("fork").Process(target=os.getpid)
    p.start()
    p.join()
    return p.pid


def _stale_segment(tag: str) -> None:
    """A ring as a capture killed in an earlier run leaves it."""
    stale = ring.RingWriter(ring.segment_name(tag, f"{SOURCE}-video", _dead_pid()), 2, 64)
    stale.close(unlink=False)


def test_killed_children_leave_no_segment(bus_env) -> None:
    from tests.helpers.fusion import save_tiny

    cam = MjpegCamera(fps=10, width=160, height=120).start()
    save_tiny(bus_env.root / "model", ALIGN)
    bus_env.write(
        '[align]\nrequired = ["video"]\nwindow_ms = 400\nhop_ms = 200\n'
        f'[[sources]]\nname = "{SOURCE}"\n'
        f'[sources.video]\ndevice = "{cam.url}"\nwidth = 160\nheight = 120\nfps = 10\n'
        'reconnect_max_s = 0.5\n'
    )
    tag = ring.bus_tag(bus_env.cfg.bus.input)
    _stale_segment(tag)
    log = bus_env.root / "daemon.log"
    with open(log, "w") as err:
        proc = streamfuse(["run", "--config", str(bus_env.path)], stderr=err)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(topics.class_topic(SOURCE).encode())
    sub.connect(bus_env.cfg.bus.output)
    classes: list[dict] = []

    def with_video(since_ns: int, n: int = 2) -> bool:
        while sub.poll(10):
            classes.append(json.loads(sub.recv_multipart()[2]))
        if proc.poll() is not None:
            raise AssertionError(log.read_text()[-3000:])
        return sum(c["present"]["video"] for c in classes if c["t_start_ns"] >= since_ns) >= n

    def names() -> list[str]:
        return [p.name for p in ring.segments(tag)]
    try:
        wait_for(lambda: with_video(0), timeout=90, what="classifications with video")
        (capture,) = _pids(log, "capture-room1-video")
        assert names() == [ring.segment_name(tag, f"{SOURCE}-video", capture)]  # the stale one went
        assert "left by a previous run" in log.read_text()

        os.kill(capture, signal.SIGKILL)
        killed_ns = time.time_ns()
        wait_for(lambda: len(_pids(log, "capture-room1-video")) == 2, timeout=5,
                 what="capture restart")
        new = _pids(log, "capture-room1-video")[1]
        wait_for(lambda: with_video(killed_ns + 10**9), timeout=30, what="video after the restart")
        assert names() == [ring.segment_name(tag, f"{SOURCE}-video", new)]

        for reader in ("aligner", "worker-0"):  # readers: nothing of theirs to clean up
            (pid,) = _pids(log, reader)
            os.kill(pid, signal.SIGKILL)
            killed_ns = time.time_ns()
            wait_for(lambda r=reader: len(_pids(log, r)) == 2, timeout=5, what=f"{reader} restart")
            wait_for(lambda t=killed_ns: with_video(t + 10**9), timeout=60,
                     what=f"video after the {reader}'s restart")
            assert names() == [ring.segment_name(tag, f"{SOURCE}-video", new)]
        sub.close()
        assert stop(proc, timeout=15) == 0
        assert names() == []
    finally:
        sub.close()
        ctx.term()
        stop(proc)
        cam.stop()
        for p in ring.segments(tag):
            p.unlink()
