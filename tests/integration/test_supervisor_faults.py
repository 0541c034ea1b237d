"""Faults in a real daemon: every part real (MJPEG camera over HTTP, text capture,
aligner, a worker with a tiny model, the broker in the supervisor).

One test per fault. They share one daemon (the module's ``rig``: starting it costs
seconds on 2 cores). Each test leaves it as it found it (camera up, a good model,
the aligner running), and each starts only once classifications with video flow
again, so any one of them can run alone (``-k``) or in any order. Stopping the
daemon at the end is checked too: SIGTERM, exit 0, STOPPING=1 seen by systemd's
stand-in."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from streamfuse.config import AlignConfig
from streamfuse.wire import topics
from tests.conftest import BusEnv
from tests.helpers.mjpeg import MjpegCamera
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for
from tests.integration.supervised import NotifySocket

pytestmark = pytest.mark.slow

SOURCE = "room1"
VIDEO = f"capture-{SOURCE}-video"
# Short windows, so that the time a restarted capture needs leaves whole windows without video:
# its frames stop for at least the 0.25 s backoff plus a start (0.4 s measured on an idle
# machine), and any gap of window + hop = 300 ms holds a whole window.
ALIGN = AlignConfig(window_ms=200, hop_ms=100, required=["video"])


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


@dataclass
class Rig:
    env: BusEnv
    proc: subprocess.Popen
    log_path: Path
    ns: NotifySocket
    w: Watch
    cam: MjpegCamera

    @property
    def model(self) -> Path:
        return self.env.root / "model"

    def log(self) -> str:
        return self.log_path.read_text()

    def pids(self, child: str) -> list[int]:
        """Every pid ``child`` has had, in start order (the last one is the live one)."""
        return [int(p) for p in re.findall(rf"{child} started \(pid (\d+)\)", self.log())]

    def mark(self) -> float:
        """Now, after reading what arrived so far (so it is not counted as later)."""
        self.w.pump()
        return time.monotonic()

    def windows_from(self, t_ns: int) -> list[dict]:
        """Classifications of windows starting at or after epoch ``t_ns``."""
        self.w.pump()
        self.ns.drain()  # read like systemd does: an unread queue drops notifications
        if self.proc.poll() is not None:
            raise AssertionError(self.log()[-3000:])
        return [c for _, c in self.w.classes if c["t_start_ns"] >= t_ns]

    def with_video(self, t_ns: int, n: int = 2) -> bool:
        return sum(c["present"].get("video", False) for c in self.windows_from(t_ns)) >= n

    def send(self, text: str) -> None:
        sent = run_streamfuse(["send", text, "--source", SOURCE, "--config", str(self.env.path)])
        assert sent.returncode == 0, sent.stderr

    def say(self, text: str) -> None:
        """One chat line sent from this process (what ``streamfuse send`` does, without the
        second or more a new interpreter takes to start on a busy machine)."""
        from streamfuse import config

        cfg = self.env.cfg
        endpoint = config.text_endpoint(cfg.source(SOURCE).text, cfg.bus, SOURCE)
        with zmq.Context() as ctx, ctx.socket(zmq.REQ) as req:
            req.linger = 0
            req.connect(endpoint)
            req.send(text.encode())
            assert req.poll(10_000), "the text capture did not answer"
            assert req.recv() == b"ok"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from tests.helpers.fusion import save_tiny

    env = BusEnv(tmp_path_factory.mktemp("faults"))
    cam = MjpegCamera(fps=10, width=160, height=120).start()
    save_tiny(env.root / "model", ALIGN)
    env.write(
        '[align]\nrequired = ["video"]\nwindow_ms = 200\nhop_ms = 100\n'
        '[fusion]\nreload_poll_s = 0.5\n'
        f'[[sources]]\nname = "{SOURCE}"\n'
        f'[sources.video]\ndevice = "{cam.url}"\nwidth = 160\nheight = 120\nfps = 10\nencoding = "jpeg"\n'
        'reconnect_max_s = 0.5\n'
        '[sources.text]\ninput = "zmq"\n'
    )
    log = env.root / "daemon.log"
    ns = NotifySocket(env.root / "notify.sock")
    with open(log, "w") as err:
        proc = streamfuse(["run", "--config", str(env.path)], stderr=err,
                          env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"})
    try:
        with zmq.Context() as ctx:
            w = Watch(ctx, env.cfg.bus.output)
            try:
                r = Rig(env, proc, log, ns, w, cam)
                wait_for(lambda: r.with_video(0), timeout=90, what="classifications with video")
                yield r
            finally:
                w.sub.close()
        # SIGTERM: the daemon stops by itself (exit 0, not SIGKILL after the 15 s ceiling)
        # and tells systemd it is stopping
        assert stop(proc, timeout=15) == 0, log.read_text()[-3000:]
        assert ns.times("STOPPING")
    finally:
        stop(proc)
        cam.stop()
        ns.close()


@pytest.fixture(autouse=True)
def flowing(rig: Rig) -> None:
    """Each fault starts on a daemon classifying windows with video."""
    now_ns = time.time_ns()
    wait_for(lambda: rig.with_video(now_ns), timeout=60, what="classifications with video")


def test_a_killed_capture_is_restarted_while_text_flows_and_windows_mark_video_absent(rig: Rig) -> None:
    """SIGKILL of the video capture: the supervisor restarts it after its first backoff
    step (README: 0.25 s); text keeps flowing meanwhile; windows mark video absent
    until frames come back. (A window with no stream present at all is not emitted: a
    chat line keeps text present in the windows of the next text_context_ms.)"""
    sent_ns = time.time_ns()
    rig.send("seven")
    wait_for(lambda: any(c["present"].get("text") and c["t_end_ns"] > sent_ns
                         for c in rig.windows_from(0)), timeout=20, what="a window with the chat line")
    pids = rig.pids(VIDEO)
    killed, killed_ns = rig.mark(), time.time_ns()
    os.kill(pids[-1], signal.SIGKILL)
    # The first line may be older than text_context_ms by now (the window holding it
    # closes late on a busy machine); a fresh one keeps the video-less windows emitted.
    rig.say("eight")
    wait_for(lambda: len(rig.pids(VIDEO)) == len(pids) + 1, timeout=20, what="capture restart")
    assert f"{VIDEO} died (killed by SIGKILL); restarting in 0.25 s" in rig.log()
    wait_for(lambda: rig.with_video(killed_ns + 10**9), timeout=30, what="video back after the restart")
    assert any(t > killed for t in rig.w.text_times)  # the other stream never stopped
    gap = [c for c in rig.windows_from(killed_ns) if not c["present"].get("video")]
    seen = [((c["t_start_ns"] - killed_ns) // 10**6, sorted(k for k, v in c["present"].items() if v))
            for c in rig.windows_from(killed_ns - 2 * 10**9)]
    assert gap, f"no window marked video absent while the capture was down: {seen}\n" + rig.log()[-2000:]


def test_a_camera_going_away_and_back_is_reconnected_not_restarted(rig: Rig) -> None:
    pids = rig.pids(VIDEO)
    try:
        rig.cam.stop()
        away_ns = time.time_ns()
        rig.send("three")  # keeps text present, so windows without video are still emitted
        wait_for(lambda: any(not c["present"].get("video") for c in rig.windows_from(away_ns)),
                 timeout=20, what="windows without video while the camera is away")
    finally:
        rig.cam.start()
    back_ns = time.time_ns()
    wait_for(lambda: rig.with_video(back_ns), timeout=30, what="video after the camera came back")
    assert rig.pids(VIDEO) == pids  # the same capture reconnected; nothing was restarted


def test_a_corrupt_model_dropped_in_place_leaves_the_old_one_serving(rig: Rig) -> None:
    from tests.helpers.fusion import save_tiny

    model_id = rig.w.classes[-1][1]["model"]
    offset = len(rig.log())
    try:
        (rig.model / "model.safetensors").write_bytes(b"\x00garbage" * 64)
        corrupted = rig.mark()
        wait_for(lambda: (rig.w.pump(), f"still serving {model_id}" in rig.log()[offset:] and
                          len(rig.w.since(corrupted)) >= 4)[1], timeout=30,
                 what="the bad artifact reported and classifications after it")
        assert {c["model"] for c in rig.w.since(corrupted)} == {model_id}
    finally:
        save_tiny(rig.model, ALIGN)  # a good artifact again


def test_a_killed_worker_is_restarted_and_no_window_is_answered_twice(rig: Rig) -> None:
    pids = rig.pids("worker-0")
    os.kill(pids[-1], signal.SIGKILL)
    wait_for(lambda: len(rig.pids("worker-0")) == len(pids) + 1, timeout=20, what="worker restart")
    after = rig.mark()
    wait_for(lambda: (rig.w.pump(), len(rig.w.since(after)) >= 2)[1], timeout=60,
             what="classifications from the restarted worker")
    keys = [(c["source"], c["t_start_ns"]) for _, c in rig.w.classes]
    assert len(keys) == len(set(keys)), "a window was answered twice"


def test_a_stopped_aligner_stops_the_watchdog_pings_until_it_resumes(rig: Rig) -> None:
    """The real aligner stopped with SIGSTOP: STATUS names it, WATCHDOG=1 pings stop
    (WATCHDOG_USEC is 1 s), and they resume with SIGCONT."""
    assert rig.ns.times("READY") and rig.ns.times("WATCHDOG")
    apid = rig.pids("aligner")[-1]
    stopped_at = time.monotonic()
    os.kill(apid, signal.SIGSTOP)
    try:
        wait_for(lambda: any(t > stopped_at and "aligner is stopped" in f.get("STATUS", "")
                             for t, f in rig.ns.drain()),
                 timeout=5, what="STATUS naming the stopped aligner")
        time.sleep(1.5)  # a silence window, not a wait for readiness
        assert not [t for t in rig.ns.times("WATCHDOG") if t > stopped_at + 0.6]
    finally:
        os.kill(apid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: [t for t in rig.ns.times("WATCHDOG") if t > resumed], timeout=10, what="pings again")
