"""A daemon with its web console, fed with frames that change, and a classification watcher.

The source ``room1`` is configured with a text capture only (input ``zmq``: the cheapest
real capture child, so a test can kill and watch it restart); its camera and microphone
are fed into the bus by :class:`MovingFeeder` (raw BGR frames whose pixels change every
frame, 20 ms audio blocks)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from streamfuse import clock
from streamfuse.wire import codec, topics
from streamfuse.wire.sockets import connect_sub
from tests.integration.daemon_fixtures import Daemon, Feeder

SOURCE = "room1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MovingFeeder(Feeder):
    """Feeder with raw 160x120 frames (a bar that moves, the frame number) and no text:
    the configured text capture sends ``room1/text``."""

    def step(self) -> None:
        while self.next_ns <= clock.now_ns():
            t = self.next_ns
            self._send(
                "audio", codec.audio_message(self.source, self.seq["audio"], t, self.block, 16000)
            )
            if self.tick % 5 == 0:
                n = self.seq["video"]
                img = np.full((120, 160, 3), 40, np.uint8)
                x = (n * 7) % 150
                img[20:100, x : x + 10] = (0, 200, 255)
                cv2.putText(
                    img, str(n), (8, 112), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1
                )
                self._send("video", codec.frame_message(self.source, n, t, img))
            self.tick += 1
            self.next_ns += 20_000_000


class Feeding:
    """Runs a :class:`MovingFeeder` on its own thread (its socket lives there)."""

    def __init__(self, bus) -> None:
        self.bus = bus
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with zmq.Context() as ctx:
            feeder = MovingFeeder(ctx, self.bus, SOURCE)
            try:
                while not self.stop.wait(0.005):
                    feeder.step()
            finally:
                feeder.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class ClassWatcher:
    """Every classification of ``room1`` a plain ZeroMQ subscriber receives, and when."""

    def __init__(self, bus) -> None:
        self.bus = bus
        self.rows: list[tuple[float, dict]] = []  # (monotonic s at arrival, payload)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="class-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with zmq.Context() as ctx:
            sub = connect_sub(ctx, self.bus, [topics.class_topic(SOURCE)])
            try:
                while not self.stop.is_set():
                    if sub.poll(50):
                        parts = sub.recv_multipart()
                        with self.lock:
                            self.rows.append((clock.monotonic_ns() / 1e9, json.loads(parts[2])))
            finally:
                sub.close(linger=0)

    def latest(self) -> tuple[float, dict] | None:
        with self.lock:
            return self.rows[-1] if self.rows else None

    def by_end(self) -> dict[int, str]:
        with self.lock:
            return {int(c["t_end_ns"]): c["label"] for _, c in self.rows}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class ConsoleDaemon:
    """``streamfuse run`` with ``[web]`` on a free port, fed, with a classification watcher."""

    def __init__(self, bus_env, *, metrics_port: int | None = None) -> None:
        self.port = free_port()
        metrics = f'listen = "127.0.0.1:{metrics_port}"' if metrics_port else 'listen = ""'
        extra = (
            f'[web]\nlisten = "127.0.0.1:{self.port}"\nmax_fps = 5\n[metrics]\n{metrics}\n'
            f'[[sources]]\nname = "{SOURCE}"\n[sources.text]\ninput = "zmq"\n'
        )
        self.daemon = Daemon(bus_env, extra)
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_dir = Path(bus_env.run_dir)
        self.feeding: Feeding | None = None
        self.watcher: ClassWatcher | None = None
        try:
            self.daemon.wait_ready()
            self.watcher = ClassWatcher(bus_env.cfg.bus)
            self.feeding = Feeding(bus_env.cfg.bus)
        except BaseException:
            self.close()
            raise

    def children(self) -> dict[str, dict]:
        try:
            data = json.loads((self.run_dir / "children.json").read_text())
        except (OSError, ValueError):
            return {}
        return {c["name"]: c for c in data["children"]}

    def close(self) -> int:
        for part in (self.feeding, self.watcher):
            if part is not None:
                part.close()
        return self.daemon.close()


@pytest.fixture(name="console")
def console_fixture(bus_env):
    """``console``: a ConsoleDaemon for one test (a test module imports ``console_fixture``);
    its daemon must exit 0 when the test is done."""
    d = ConsoleDaemon(bus_env)
    try:
        yield d
    finally:
        assert d.close() == 0
