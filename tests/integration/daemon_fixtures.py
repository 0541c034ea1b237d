"""A real daemon (`streamfuse run`) for tests that need classifications flowing.

No configured source (so no capture processes): the test feeds synthetic
camera, microphone and text messages into the bus itself, stamped with the
current time, and a tiny model (tests/helpers/fusion.py) classifies them."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import cv2
import numpy as np
import zmq

from streamfuse import clock
from streamfuse.config import AlignConfig
from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_pub
from tests.helpers.proc import stop, streamfuse, wait_for


class Feeder:
    """Publishes ``source``'s video (JPEG 10 fps), audio (20 ms blocks) and text heartbeats, paced by the caller."""

    def __init__(self, ctx: zmq.Context, bus, source: str = "room1") -> None:
        self.pub = connect_pub(ctx, bus)
        self.source = source
        self.seq = {"video": 0, "audio": 0, "text": 0}
        self.next_ns = clock.now_ns()
        self.tick = 0
        img = np.zeros((64, 64, 3), np.uint8)
        cv2.putText(img, "7", (16, 52), cv2.FONT_HERSHEY_SIMPLEX, 1.8, (255, 255, 255), 3)
        self.jpeg = cv2.imencode(".jpg", img)[1].tobytes()
        self.block = (0.1 * np.sin(np.arange(320) / 5)).astype(np.float32).reshape(320, 1)

    def _send(self, stream: str, msg) -> None:
        self.pub.send_multipart(codec.encode(msg), copy=False)
        self.seq[stream] += 1

    def step(self) -> None:
        """Publish everything due up to now (call it often)."""
        while self.next_ns <= clock.now_ns():
            t = self.next_ns
            s = self.source
            self._send("audio", codec.audio_message(s, self.seq["audio"], t, self.block, 16000))
            if self.tick % 5 == 0:
                self._send("video", codec.frame_message(s, self.seq["video"], t, self.jpeg, shape=(64, 64, 3),
                                                        encoding="jpeg"))
                self._send("text", codec.heartbeat_message(s, "text", self.seq["text"], t))
            self.tick += 1
            self.next_ns += 20_000_000

    def close(self) -> None:
        self.pub.close()


class Daemon:
    """``streamfuse run`` with a tiny model, READY seen on a notify socket."""

    def __init__(self, bus_env, extra: str = "") -> None:
        from tests.helpers.fusion import save_tiny

        model = bus_env.root / "model"
        save_tiny(model, AlignConfig())
        bus_env.write(extra)
        self.bus_env = bus_env
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = bus_env.root / "notify.sock"
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.05)
        self.log = bus_env.root / "daemon.log"
        with open(self.log, "w") as err:
            self.proc: subprocess.Popen = streamfuse(["run", "--config", str(bus_env.path)],
                                                     env={"NOTIFY_SOCKET": str(self.notify_path)}, stderr=err)
        self.ready = False

    def _poll_ready(self) -> bool:
        try:
            self.ready = self.ready or b"READY=1" in self.notify.recv(4096)
        except TimeoutError:
            pass
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{Path(self.log).read_text()[-3000:]}")
        return self.ready

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self._poll_ready, timeout=timeout, what="daemon READY=1")

    def close(self) -> int:
        code = stop(self.proc, timeout=15)
        self.notify.close()
        return code
