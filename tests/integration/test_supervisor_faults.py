"""Faults in a real daemon: every part real (MJPEG camera over HTTP, text capture,
aligner, a worker with a tiny model, the broker in the supervisor).

One daemon goes through the faults in turn (starting it costs seconds on 2 cores):
SIGKILL of a capture child, the camera going away and coming back, a corrupt
model dropped in place, SIGKILL of the worker."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import zmq

from streamfuse.config import AlignConfig
from streamfuse.wire import topics
from tests.helpers.mjpeg import MjpegCamera
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for
from tests.integration.supervised import NotifySocket

SOURCE = "room1"
# Short windows, so that the second or so a restarted capture needs leaves whole windows without video.
ALIGN = AlignConfig(window_ms=400, hop_ms=200, required=["video"])


class Watch:
    """Classifications and text traffic seen on the bus, with arrival times."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.subscribe(topics.class_topic(SOURCE).encode())
        self.sub.subscribe(topics.topic(SOURCE, "text").encode())
        self.sub.connect(endpoint)
        self.classes: list[tuple[float, dict]] = []
        self.text_times: list[float] = []

    def pump(self) -> None:
        while self.sub.poll(10):
            parts = self.sub.recv_multipart()
            if topics.is_class_topic(parts[0]):
                self.classes.append((time.monotonic(), json.loads(parts[2])))
            else:
                self.text_times.append(time.monotonic())

    def since(self, t: float) -> list[dict]:
        return [c for at, c in self.classes if at >= t]


def _pids(log: Path, child: str) -> list[int]:
    return [int(p) for p in re.findall(rf"{child} started \(pid (\d+)\)", log.read_text())]


@pytest.mark.slow
def test_faults_in_a_running_daemon(bus_env) -> None:
    from tests.helpers.fusion import save_tiny

    cam = MjpegCamera(fps=10, width=160, height=120).start()
    model = bus_env.root / "model"
    save_tiny(model, ALIGN)
    bus_env.write(
        '[align]\nrequired = ["video"]\nwindow_ms = 400\nhop_ms = 200\n'
        '[fusion]\nreload_poll_s = 0.5\n'
        f'[[sources]]\nname = "{SOURCE}"\n'
        f'[sources.video]\ndevice = "{cam.url}"\nwidth = 160\nheight = 120\nfps = 10\nencoding = "jpeg"\n'
        'reconnect_max_s = 0.5\n'
        '[sources.text]\ninput = "zmq"\n'
    )
    log = bus_env.root / "daemon.log"
    ns = NotifySocket(bus_env.root / "notify.sock")
    with open(log, "w") as err:
        proc = streamfuse(["run", "--config", str(bus_env.path)], stderr=err,
                          env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"})
    try:
        with zmq.Context() as ctx:
            w = Watch(ctx, bus_env.cfg.bus.output)
            try:
                def windows_from(t_ns: int) -> list[dict]:
                    """Classifications of windows starting at or after epoch ``t_ns``."""
                    w.pump()
                    ns.drain()  # read like systemd does: an unread queue drops notifications
                    if proc.poll() is not None:
                        raise AssertionError(log.read_text()[-3000:])
                    return [c for _, c in w.classes if c["t_start_ns"] >= t_ns]

                def with_video(t_ns: int, n: int = 2) -> bool:
                    return sum(c["present"].get("video", False) for c in windows_from(t_ns)) >= n

                wait_for(lambda: with_video(0), timeout=90, what="classifications with video")
                model_id = w.classes[-1][1]["model"]

                # 1. SIGKILL the video capture: restarted within 2 s; text keeps flowing
                #    meanwhile; windows mark video absent until frames come back. (A window
                #    with no stream present at all is not emitted: a chat line keeps text
                #    present in the windows of the next text_context_ms.)
                sent = run_streamfuse(["send", "seven", "--source", SOURCE, "--config", str(bus_env.path)])
                assert sent.returncode == 0, sent.stderr
                wait_for(lambda: any(c["present"].get("text") for c in windows_from(0)), timeout=20,
                         what="a window with the chat line")
                (old,) = _pids(log, "capture-room1-video")
                killed, killed_ns = time.monotonic(), time.time_ns()
                os.kill(old, signal.SIGKILL)
                wait_for(lambda: len(_pids(log, "capture-room1-video")) == 2, timeout=5, what="capture restart")
                assert time.monotonic() - killed < 2.0
                wait_for(lambda: with_video(killed_ns + 10**9), timeout=30,
                         what="video back after the restart")
                assert any(t > killed for t in w.text_times)  # the other stream never stopped
                gap = [c for c in windows_from(killed_ns) if not c["present"].get("video")]
                assert gap, "no window marked video absent while the capture was down"

                # 2. The camera goes away and comes back: the capture reconnects by itself.
                cam.stop()
                away_ns = time.time_ns()
                assert run_streamfuse(["send", "three", "--source", SOURCE, "--config", str(bus_env.path)]).returncode == 0
                wait_for(lambda: any(not c["present"].get("video") for c in windows_from(away_ns)),
                         timeout=20, what="windows without video while the camera is away")
                cam.start()
                back_ns = time.time_ns()
                wait_for(lambda: with_video(back_ns), timeout=30, what="video after the camera came back")
                assert len(_pids(log, "capture-room1-video")) == 2  # reconnected, not restarted

                # 3. A corrupt model dropped in place: the old one keeps serving.
                (model / "model.safetensors").write_bytes(b"\x00garbage" * 64)
                corrupted = time.monotonic()
                wait_for(lambda: (w.pump(), f"still serving {model_id}" in log.read_text() and
                                  len(w.since(corrupted)) >= 4)[1], timeout=30,
                         what="the bad artifact reported and classifications after it")
                assert {c["model"] for c in w.since(corrupted)} == {model_id}
                save_tiny(model, ALIGN)  # a good artifact again

                # 4. SIGKILL the worker: restarted; no window answered twice.
                (wpid,) = _pids(log, "worker-0")
                os.kill(wpid, signal.SIGKILL)
                wait_for(lambda: len(_pids(log, "worker-0")) == 2, timeout=5, what="worker restart")
                after = time.monotonic()
                wait_for(lambda: (w.pump(), len(w.since(after)) >= 2)[1], timeout=60,
                         what="classifications from the restarted worker")
                keys = [(c["source"], c["t_start_ns"]) for _, c in w.classes]
                assert len(keys) == len(set(keys)), "a window was answered twice"

                # 5. The real aligner stopped with SIGSTOP: the watchdog pings stop, and resume.
                assert ns.times("READY") and ns.times("WATCHDOG")
                (apid,) = _pids(log, "aligner")
                os.kill(apid, signal.SIGSTOP)
                try:
                    stopped_at = time.monotonic()
                    wait_for(lambda: any("aligner is stopped" in f.get("STATUS", "") for _, f in ns.drain()),
                             timeout=5, what="STATUS naming the stopped aligner")
                    time.sleep(1.5)  # a silence window, not a wait for readiness
                    assert not [t for t in ns.times("WATCHDOG") if t > stopped_at + 0.6]
                finally:
                    os.kill(apid, signal.SIGCONT)
                resumed = time.monotonic()
                wait_for(lambda: [t for t in ns.times("WATCHDOG") if t > resumed], timeout=10, what="pings again")
            finally:
                w.sub.close()
        assert stop(proc, timeout=15) == 0
        assert ns.times("STOPPING")
    finally:
        stop(proc)
        cam.stop()
        ns.close()
