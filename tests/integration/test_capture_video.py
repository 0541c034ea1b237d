"""Video capture: a real MJPEG-over-HTTP camera and real video files through OpenCV."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from streamfuse.frameplane.inline import Inliner
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import connect_sub
from tests.helpers import media
from tests.helpers.mjpeg import MjpegCamera
from tests.helpers.proc import stop, streamfuse, wait_for


class Frames:
    """Collects ``room1/video`` messages from the broker's output; frames that came by
    reference (the default frame plane) are copied out of it on arrival."""

    def __init__(self, ctx: zmq.Context, env) -> None:
        self.sock = connect_sub(ctx, env.cfg.bus, ["room1/video"])
        self.messages: list[Message] = []
        self.inliner = Inliner()
        self.lost = 0

    def pump(self, max_s: float = 0.25) -> list[Message]:
        """Take what has arrived, for at most ``max_s``: a 60 fps stream always has a next
        frame within 20 ms, so waiting for a quiet moment could last minutes."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and self.sock.poll(20):
            parts = self.inliner.parts(self.sock.recv_multipart())
            if parts is None:
                self.lost += 1
            else:
                self.messages.append(codec.decode(parts))
        return self.messages

    def frames(self) -> list[Message]:
        return [m for m in self.pump() if m.kind == "frame"]

    def close(self) -> None:
        self.sock.close()
        self.inliner.close()


def image(m: Message) -> np.ndarray:
    if m.header.encoding == "jpeg":
        return cv2.imdecode(np.frombuffer(bytes(m.payload[0]), np.uint8), cv2.IMREAD_COLOR)
    return m.array()


def counters(frames: list[Message]) -> list[int | None]:
    return [media.read_counter(image(m)) for m in frames]


def _capture(env, video_cfg: str) -> subprocess.Popen:
    env.write(f'[[sources]]\nname = "room1"\n[sources.video]\n{video_cfg}\n')
    return streamfuse(["capture", "video", "--source", "room1", "--config", str(env.path)],
                      stderr=subprocess.PIPE, text=True)


def _assert_in_order(frames: list[Message], shape: tuple[int, int, int]) -> list[int]:
    assert all(tuple(m.header.shape) == shape for m in frames)
    t = [m.t_ns for m in frames]
    assert t == sorted(t) and len(set(t)) == len(t), "t_ns must increase"
    seq = [m.header.seq for m in frames]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    c = counters(frames)
    assert None not in c, c
    assert c == sorted(c) and len(set(c)) == len(c), f"frames reordered or repeated: {c}"
    return c  # type: ignore[return-value]


@pytest.mark.slow
def test_mjpeg_camera_frames_in_order_and_reconnect_after_outage(broker) -> None:
    with MjpegCamera(fps=30, width=320, height=240) as cam, zmq.Context() as ctx:
        bus = Frames(ctx, broker)
        # The camera is 320x240; the capture resizes to the configured 160x120.
        proc = _capture(broker, f'device = "{cam.url}"\nwidth = 160\nheight = 120\nreconnect_max_s = 0.5\n')
        try:
            wait_for(lambda: len(bus.frames()) >= 20, timeout=20, what="20 frames")
            before = _assert_in_order(bus.frames(), (120, 160, 3))
            assert bus.inliner.inlined >= 20 and bus.lost == 0  # by reference, none overwritten

            cam.stop()
            down_ns = time.time_ns()
            # Heartbeats keep the stream's watermark moving while the camera is down (2 s).
            wait_for(lambda: any(m.kind == "heartbeat" and m.t_ns > down_ns + 2_000_000_000
                                 for m in bus.pump()), timeout=10, what="2 s of heartbeats")
            n_down = len(bus.frames())
            cam.start()
            wait_for(lambda: len(bus.frames()) >= n_down + 15, timeout=20, what="frames after the restart")
            frames = bus.frames()
            all_counters = _assert_in_order(frames, (120, 160, 3))
            after = all_counters[n_down:]
            assert after[0] > before[-1] + 30, "the counters must show the 2 s outage"
            hb = [m for m in bus.messages if m.kind == "heartbeat"]
            assert len(hb) >= 10
            # frames and heartbeats share the topic's seq: no gaps means nothing was lost on the bus
            first = bus.messages[0].header.seq
            assert [m.header.seq for m in bus.messages] == list(range(first, first + len(bus.messages)))
        finally:
            bus.close()
            # SIGTERM, then SIGKILL after 30 s (a ceiling against a hang, not a timing):
            # exit code 0 means it stopped on SIGTERM by itself
            rc = stop(proc, timeout=30)
    log = proc.stderr.read()
    assert rc == 0, (rc, log)
    assert "reopened" in log
    reconnects = int(log.split("reconnects=")[1].split()[0])
    assert reconnects >= 1, log


def test_video_file_is_paced_at_its_own_rate_in_order(broker, tmp_path: Path) -> None:
    video = media.make_video(tmp_path / "clip.avi", n_frames=30, fps=30, width=160, height=120)
    with zmq.Context() as ctx:
        bus = Frames(ctx, broker)
        proc = _capture(broker, f'device = "{video}"\nwidth = 160\nheight = 120\nencoding = "jpeg"\n'
                                'jpeg_quality = 80\n')
        try:
            wait_for(lambda: any(media.read_counter(image(m)) == 29 for m in bus.frames()),
                     timeout=20, what="the file's last frame")
            # After the end: heartbeats only (the file does not loop).
            wait_for(lambda: bus.pump()[-1].kind == "heartbeat", timeout=10, what="heartbeats after the end")
            frames = bus.frames()
            c = _assert_in_order(frames, (120, 160, 3))
            assert all(m.header.encoding == "jpeg" for m in frames)
            # PUB/SUB may lose the first frames while the subscription propagates, never later ones.
            assert c == list(range(c[0], 30)) and c[0] < 10, c
            span_s = (frames[-1].t_ns - frames[0].t_ns) / 1e9
            assert span_s >= 0.8 * (len(frames) - 1) / 30, f"not paced at 30 fps: {span_s:.3f} s"
        finally:
            bus.close()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(5)
    assert rc == 130  # stopped cleanly by Ctrl-C, reported as a shell expects (128 + SIGINT)
    assert "grabbed=30 published=30" in proc.stderr.read()


def test_video_file_loops(broker, tmp_path: Path) -> None:
    video = media.make_video(tmp_path / "short.avi", n_frames=8, fps=60, width=64, height=48)
    with zmq.Context() as ctx:
        bus = Frames(ctx, broker)
        proc = _capture(broker, f'device = "{video}"\nwidth = 64\nheight = 48\nloop = true\n')
        try:
            wait_for(lambda: len(bus.frames()) >= 24, timeout=20, what="three loops")
            c = counters(bus.frames())
            start = c.index(0)
            assert c[start:start + 16] == list(range(8)) * 2, c
        finally:
            bus.close()
            assert stop(proc) == 0


@pytest.mark.parametrize("kind", ["camera", "file"])
def test_heartbeats_close_each_window_between_frames(broker, tmp_path: Path, kind: str) -> None:
    """At 4 fps a frame comes every 250 ms; windows end every 500 ms ([align] defaults). Just
    after each end a heartbeat (or a frame) must say the stream has passed it, and no heartbeat
    may promise more than the next frame keeps: its t_ns is never newer than that frame's."""
    hop = 500_000_000
    with MjpegCamera(fps=4, width=160, height=120) as cam, zmq.Context() as ctx:
        video = media.make_video(tmp_path / "slow.avi", n_frames=12, fps=4, width=160, height=120)
        device = cam.url if kind == "camera" else str(video)
        bus = Frames(ctx, broker)
        proc = _capture(broker, f'device = "{device}"\nwidth = 160\nheight = 120\nloop = true\n')
        try:
            wait_for(lambda: len(bus.frames()) >= 14, timeout=30, what="14 frames at 4 fps")
        finally:
            bus.close()
            assert stop(proc) == 0
    msgs = bus.messages
    start = next(i for i, m in enumerate(msgs) if m.kind == "frame")
    msgs = msgs[start:]
    for i, m in enumerate(msgs):
        if m.kind == "heartbeat":
            nxt = next((x for x in msgs[i + 1:] if x.kind == "frame"), None)
            assert nxt is None or nxt.t_ns >= m.t_ns, "a heartbeat passed a frame not yet published"
    times = [m.t_ns for m in msgs]
    ends = range((times[0] // hop + 1) * hop, times[-1], hop)
    lags = [min(t - e for t in times if t >= e) for e in ends]
    assert len(lags) >= 5
    lags_ms = sorted(x / 1e6 for x in lags)
    # Without end-of-window heartbeats the wait is up to a heartbeat interval (100 ms) or a frame.
    assert lags_ms[len(lags_ms) // 2] < 5.0 and sum(x < 30 for x in lags_ms) >= 0.8 * len(lags_ms), lags_ms


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _hostile_phase(bus: Frames, proc: subprocess.Popen, seconds: float) -> tuple[float, int]:
    """Pump the bus for ``seconds``: the longest gap between messages (s) and the last RSS."""
    t0 = time.monotonic()
    n0, last, gap = len(bus.pump()), time.monotonic(), 0.0
    while time.monotonic() - t0 < seconds:
        assert proc.poll() is None, "the capture died on a hostile stream"
        if len(bus.pump()) > n0:
            n0, last = len(bus.messages), time.monotonic()
        gap = max(gap, time.monotonic() - last)
    return gap, _rss_kib(proc.pid)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["garbage", "stall", "one"])
def test_mjpeg_camera_hostile_stream_reconnects_bounded_and_stops(broker, tmp_path: Path,
                                                                 mode: str) -> None:
    """A camera that sends random bytes forever after a part header, or half a JPEG and then
    nothing on an open connection: the capture keeps heartbeating, keeps its memory, recovers
    when good frames come back, and stops on SIGTERM within 2 s while the stream is hostile."""
    with MjpegCamera(fps=30, width=160, height=120) as cam, zmq.Context() as ctx:
        cam.mode = mode
        bus = Frames(ctx, broker)
        broker.write(f'[[sources]]\nname = "room1"\n[sources.video]\ndevice = "{cam.url}"\n'
                     'width = 160\nheight = 120\nreconnect_max_s = 0.5\n')
        with open(tmp_path / "capture.log", "w") as err:
            proc = streamfuse(["capture", "video", "--source", "room1", "--config",
                               str(broker.path)], stderr=err)
        try:
            wait_for(lambda: any(m.kind == "heartbeat" for m in bus.pump()), timeout=20,
                     what="the first heartbeat")
            _hostile_phase(bus, proc, 2.0)
            gap, rss0 = _hostile_phase(bus, proc, 2.0)
            gap2, rss1 = _hostile_phase(bus, proc, 6.0)
            print(f"{mode}: gaps {gap:.2f} {gap2:.2f} s, rss {rss0} -> {rss1} KiB, "
                  f"garbage {cam.garbage_sent >> 20} MiB, frames {len(bus.frames())}")
            assert rss1 - rss0 < 20_000, (rss0, rss1)
            assert max(gap, gap2) < 1.0, "heartbeats stopped while the camera was hostile"
            n = len(bus.frames())
            cam.mode = "good"
            wait_for(lambda: len(bus.frames()) >= n + 15, timeout=20, what="frames after recovery")
            cam.mode = mode
            _hostile_phase(bus, proc, 3.0)
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(10)
            took = time.monotonic() - t
        finally:
            bus.close()
            stop(proc)
    log = (tmp_path / "capture.log").read_text()
    assert rc == 0 and took < 2.0, (rc, took, log[-2000:])
    # ~14 s hostile: with the backoff (0.1 s doubling to 0.5 s) about 30 attempts, not one
    # every few milliseconds (each logging a warning)
    reconnects = int(log.split("reconnects=")[1].split()[0])
    assert 3 <= reconnects <= 60, log[-2000:]
