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
from tests.helpers.mjpeg import MjpegCamera
from tests.helpers.proc import stop, streamfuse, wait_for

SOURCE = "room1"


class Watch:
    """Classifications and text traffic seen on the bus, with arrival times."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.subscribe(f"{SOURCE}/class".encode())
        self.sub.subscribe(f"{SOURCE}/text".encode())
        self.sub.connect(endpoint)
        self.classes: list[tuple[float, dict]] = []
        self.text_times: list[float] = []

    def pump(self) -> None:
        while self.sub.poll(10):
            parts = self.sub.recv_multipart()
            if parts[0].endswith(b"/class"):
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
    save_tiny(model, AlignConfig(required=["video"]))
    bus_env.write(
        '[align]\nrequired = ["video"]\n'
        '[fusion]\nreload_poll_s = 0.5\n'
        f'[[sources]]\nname = "{SOURCE}"\n'
        f'[sources.video]\ndevice = "{cam.url}"\nwidth = 160\nheight = 120\nfps = 10\nencoding = "jpeg"\n'
        'reconnect_max_s = 0.5\n'
        '[sources.text]\ninput = "zmq"\n'
    )
    log = bus_env.root / "daemon.log"
    with open(log, "w") as err:
        proc = streamfuse(["run", "--config", str(bus_env.path)], stderr=err)
    try:
        with zmq.Context() as ctx:
            w = Watch(ctx, bus_env.cfg.bus.output)
            try:
                def video_windows(after: float, n: int = 2) -> bool:
                    w.pump()
                    if proc.poll() is not None:
                        raise AssertionError(log.read_text()[-3000:])
                    return sum(c["present"].get("video", False) for c in w.since(after)) >= n

                wait_for(lambda: video_windows(0), timeout=90, what="classifications with video")
                model_id = w.classes[-1][1]["model"]

                # 1. SIGKILL the video capture: restarted within 2 s; text keeps flowing
                #    meanwhile; windows mark video absent until frames come back.
                (old,) = _pids(log, "capture-room1-video")
                killed = time.monotonic()
                os.kill(old, signal.SIGKILL)
                wait_for(lambda: len(_pids(log, "capture-room1-video")) == 2, timeout=5, what="capture restart")
                restarted = time.monotonic()
                assert restarted - killed < 2.0
                wait_for(lambda: video_windows(restarted), timeout=30, what="video back after the restart")
                assert any(t > killed for t in w.text_times)  # the other stream never stopped
                gap = [c for c in w.since(killed) if not c["present"].get("video")]
                assert gap, "no window marked video absent while the capture was down"

                # 2. The camera goes away and comes back: the capture reconnects by itself.
                cam.stop()
                away = time.monotonic()
                wait_for(lambda: (w.pump(), any(not c["present"].get("video") for c in w.since(away)))[1],
                         timeout=20, what="windows without video while the camera is away")
                cam.start()
                back = time.monotonic()
                wait_for(lambda: video_windows(back), timeout=30, what="video after the camera came back")
                assert len(_pids(log, "capture-room1-video")) == 2  # reconnected, not restarted

                # 3. A corrupt model dropped in place: the old one keeps serving.
                (model / "model.safetensors").write_bytes(b"\x00garbage" * 64)
                corrupted = time.monotonic()
                wait_for(lambda: (w.pump(), f"still serving {model_id}" in log.read_text() and
                                  len(w.since(corrupted)) >= 4)[1], timeout=30,
                         what="the bad artifact reported and classifications after it")
                assert {c["model"] for c in w.since(corrupted)} == {model_id}
                save_tiny(model, AlignConfig(required=["video"]))  # a good artifact again

                # 4. SIGKILL the worker: restarted; no window answered twice.
                (wpid,) = _pids(log, "worker-0")
                os.kill(wpid, signal.SIGKILL)
                wait_for(lambda: len(_pids(log, "worker-0")) == 2, timeout=5, what="worker restart")
                after = time.monotonic()
                wait_for(lambda: (w.pump(), len(w.since(after)) >= 2)[1], timeout=60,
                         what="classifications from the restarted worker")
                keys = [(c["source"], c["t_start_ns"]) for _, c in w.classes]
                assert len(keys) == len(set(keys)), "a window was answered twice"
            finally:
                w.sub.close()
        assert stop(proc, timeout=15) == 0
    finally:
        stop(proc)
        cam.stop()
