"""``streamfuse capture video``: frames from OpenCV onto the bus.

The device is a camera index (``"0"``), a video file (paced at its own frame
rate, optionally looped) or a URL (http MJPEG, rtsp, udp). Each frame's ``t_ns``
is its grab time. When the source fails or ends, the capture retries with
exponential backoff up to ``reconnect_max_s`` and publishes heartbeats on
``<source>/video`` meanwhile, so windows keep closing. Only a source that
delivered frames for ``STABLE_NS`` is reopened at once and starts its backoff
over; one that fails sooner keeps backing off.

Pure parts (source kind, pacing schedule, resize decision) are functions and
small classes; :class:`VideoCapture` is the thin loop around them.

Between frames the capture sends heartbeats (watermark = now) just after each
end of the aligner's windows, so a window closes as soon as its time has
passed instead of when the next frame arrives (up to a frame period later).
A file is paced in the publishing thread, which heartbeats while it waits. A
camera or URL blocks inside ``grab()``, so a :class:`Grabber` thread grabs and
stamps while the publishing thread heartbeats; a heartbeat's watermark never
passes a frame already stamped but not yet published.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import zmq

from streamfuse import clock, readiness
from streamfuse.capture.publish import Backoff, Heartbeats, StreamPublisher
from streamfuse.config import BusConfig, VideoConfig
from streamfuse.frameplane.writer import PlaneWriter, ring_slots, slot_bytes
from streamfuse.node import Runtime
from streamfuse.wire.sockets import LINGER_MS, connect_pub

log = logging.getLogger("streamfuse.capture.video")

HEARTBEAT_NS = 100 * clock.NS_PER_MS
URL_PREFIXES = ("http://", "https://", "rtsp://", "rtsps://", "udp://", "tcp://", "rtmp://")
# Network reads block inside FFmpeg: bound them so SIGTERM is seen within ~1 s.
OPEN_TIMEOUT_MS = 1500
READ_TIMEOUT_MS = 1000
# A paced file that falls this far behind its schedule restarts the schedule
# instead of bursting frames to catch up.
MAX_BEHIND_NS = 500 * clock.NS_PER_MS
# A source that delivered frames for this long after it opened was working: when it fails it
# is reopened at once and its backoff starts over. One that fails sooner (a camera that sends
# a frame per connection and then drops it) waits its backoff, like one that cannot be opened.
STABLE_NS = 5 * clock.NS_PER_S
# A live source's frames waiting for the publishing thread; more are grabbed and skipped.
MAX_QUEUED_FRAMES = 2


# ----------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Device:
    """What ``video.device`` names. ``kind``: ``index``, ``url`` or ``file``."""

    kind: str
    target: int | str


def parse_device(device: str) -> Device:
    """``"0"`` -> camera 0; ``"http://..."`` -> URL; anything else is a file path."""
    d = device.strip()
    if d.isdigit():
        return Device("index", int(d))
    if d.lower().startswith(URL_PREFIXES):
        return Device("url", d)
    return Device("file", d)


class Pacer:
    """Deadlines for playing a file at ``fps``: frame ``i`` is due at ``start + i / fps``.

    Pure: :meth:`deadline_ns` takes ``now_ns``; when the caller has fallen more
    than ``MAX_BEHIND_NS`` behind (a stall, a slow decode) the schedule restarts
    at now instead of bursting frames out to catch up.
    """

    def __init__(self, fps: float) -> None:
        self.period_ns = round(clock.NS_PER_S / fps)
        self.start_ns: int | None = None
        self.index = 0

    def deadline_ns(self, now_ns: int) -> int:
        """When the next frame is due (then call :meth:`advance`)."""
        if self.start_ns is None:
            self.start_ns, self.index = now_ns, 0
        due = self.start_ns + self.index * self.period_ns
        if now_ns - due > MAX_BEHIND_NS:
            self.start_ns, self.index = now_ns, 0
            due = now_ns
        return due

    def advance(self) -> None:
        self.index += 1

    def restart(self) -> None:
        self.start_ns = None


def file_fps(reported: float, configured: float) -> float:
    """The file's own frame rate, or the configured one when the container has none."""
    if reported and np.isfinite(reported) and 0 < reported <= 1000:
        return float(reported)
    return configured


def fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` as ``(height, width, 3)`` BGR uint8 (resized only if it differs)."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[0] != height or image.shape[1] != width:
        interp = cv2.INTER_AREA if image.shape[1] > width else cv2.INTER_LINEAR
        image = cv2.resize(image, (width, height), interpolation=interp)
    return image


# ----------------------------------------------------------------------------- the node


class Grabber(threading.Thread):
    """Grabs, stamps and decodes frames of a live source in its own thread.

    Frames go to :attr:`frames` as ``(t_ns, image)``; ``image`` None means the
    source failed and the thread has ended. :meth:`watermark` is the time the
    publishing thread may promise in a heartbeat: now, unless a frame has been
    stamped and not yet taken (then None). The stamp and that check share a
    lock, so a frame stamped after a heartbeat is never older than it.
    """

    def __init__(self, cap: cv2.VideoCapture, name: str) -> None:
        super().__init__(name=f"grab-{name}", daemon=True)
        self.cap = cap
        self.frames: queue.SimpleQueue[tuple[int, np.ndarray | None]] = queue.SimpleQueue()
        self.halt = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0  # stamped, not yet taken by the publishing thread
        # frames grabbed but not decoded: the publishing thread was behind (grab thread writes)
        self.skipped = 0
        self._skips_reported = 0  # (publishing thread writes)

    def run(self) -> None:
        while not self.halt.is_set():
            ok = self.cap.grab()
            if ok and self._in_flight >= MAX_QUEUED_FRAMES:
                self.skipped += 1  # keep draining the device, as the camera would drop them anyway
                continue
            with self._lock:
                t_ns = clock.now_ns()  # the grab time is the frame's capture time
                self._in_flight += 1
            image = self.cap.retrieve()[1] if ok else None
            self.frames.put((t_ns, image))
            if image is None:
                return

    def take(self, timeout_s: float) -> tuple[int, np.ndarray | None] | None:
        """The next frame, or None after ``timeout_s`` without one."""
        try:
            item = self.frames.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        with self._lock:
            self._in_flight -= 1
        return item

    def unreported_skips(self) -> int:
        """Frames skipped since the last call (called by the publishing thread only)."""
        n = self.skipped - self._skips_reported
        self._skips_reported += n
        return n

    def watermark(self) -> int | None:
        with self._lock:
            return None if self._in_flight else clock.now_ns()

    def finish(self, timeout_s: float = 1.0) -> bool:
        """Ask the thread to stop; True once it has (the capture may then be released)."""
        self.halt.set()
        self.join(timeout_s)
        return not self.is_alive()


def quiet_opencv() -> None:
    """Keep FFmpeg's and OpenCV's per-attempt chatter off stderr: we log one line per event.

    FFmpeg reads ``OPENCV_FFMPEG_LOGLEVEL`` when its backend first starts, so this
    runs before the first ``cv2.VideoCapture``. An explicit setting wins.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def open_source(dev: Device, cfg: VideoConfig) -> cv2.VideoCapture | None:
    """Open the device; None when it cannot be opened now."""
    if dev.kind == "file" and not os.path.exists(str(dev.target)):
        return None
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
    if dev.kind == "index":
        cap = cv2.VideoCapture(int(dev.target), cv2.CAP_ANY, params)
    else:
        cap = cv2.VideoCapture(str(dev.target), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        return None
    if dev.kind == "index":
        # Ask the camera for the configured mode; whatever it delivers is resized anyway.
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
    return cap


class Opener(threading.Thread):
    """Opens the source off the publishing thread, which heartbeats meanwhile.

    A URL that accepts the connection and then sends nothing blocks the open for
    ``OPEN_TIMEOUT_MS``. :attr:`done` is set once :attr:`cap` holds the result;
    after :meth:`abandon` (the capture is stopping) a late success is released here.
    """

    def __init__(self, dev: Device, cfg: VideoConfig, name: str) -> None:
        super().__init__(name=f"open-{name}", daemon=True)
        self.dev, self.cfg = dev, cfg
        self.cap: cv2.VideoCapture | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        cap = open_source(self.dev, self.cfg)
        with self._lock:
            if self._abandoned and cap is not None:
                cap.release()
                cap = None
            self.cap = cap
        self.done.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()


class VideoCapture:
    """Grab, stamp, encode and publish frames until ``stop`` is set.

    Two states: *streaming* (``self.cap`` open: pace, grab, publish) and *down*
    (no source: heartbeats, and open attempts on the backoff schedule).
    """

    def __init__(self, source: str, cfg: VideoConfig, bus: BusConfig, *,
                 grid: tuple[int, int] | None = None, hold_ms: int = 3000) -> None:
        self.source = source
        self.hold_ms = hold_ms  # how long a frame in the frame plane must stay readable
        self.plane = PlaneWriter(None)
        self.cfg = cfg
        self.bus = bus
        self.device = parse_device(cfg.device)
        self.backoff = Backoff(cfg.reconnect_max_s)
        self.pub: StreamPublisher | None = None
        self.cap: cv2.VideoCapture | None = None
        self.pacer: Pacer | None = None
        self.hb = Heartbeats(HEARTBEAT_NS, grid)
        self.grabber: Grabber | None = None
        self.opener: Opener | None = None
        self.delivered = False  # a frame came since the source was last opened
        self.opened_ns = 0  # when it was last opened
        self.retry_at_ns = 0
        self.attempts = 0
        self.played: tuple[float, int] | None = None  # (mtime, size) of a file played to its end
        quiet_opencv()

    def run(self, stop: threading.Event, *, ctx: zmq.Context | None = None) -> int:
        with Runtime(ctx) as rt:
            sock = rt.open(None, lambda c: connect_pub(c, self.bus), linger=LINGER_MS)
            return self._run(stop, sock)

    def _run(self, stop: threading.Event, sock: zmq.Socket) -> int:
        cfg, dev = self.cfg, self.device
        log.info("video %s: starting on %s %s (%dx%d, %s)", self.source, dev.kind, dev.target,
                 cfg.width, cfg.height, cfg.encoding)
        pub = self.pub = StreamPublisher(sock, self.source, "video")
        self.plane = PlaneWriter.open(self.bus, f"{self.source}-video",
                                      slots=ring_slots(cfg.fps, self.hold_ms),
                                      nbytes=slot_bytes(cfg.width, cfg.height, cfg.encoding))
        try:
            while not stop.is_set():
                if self.cap is None:
                    self._down(stop, pub)
                else:
                    self._stream_one(stop, pub, self.cap)
        finally:
            if self.opener is not None:
                self.opener.abandon()
            self._release()
            self.plane.close()
        log.info("video %s stopped: %s", self.source, pub.counts.line())
        return 0

    # ------------------------------------------------------------------ down

    def _down(self, stop: threading.Event, pub: StreamPublisher) -> None:
        """No source: open it when the backoff allows, else heartbeat and wait."""
        now = clock.now_ns()
        if self.opener is not None:
            if self.opener.done.is_set():
                self._opened(pub, self.opener.cap)
                return
        elif now >= self.retry_at_ns:
            if self.played is not None and _file_signature(self.device) == self.played:
                # A file that played to its end without `loop` stays finished until it changes.
                self.retry_at_ns = now + round(self.cfg.reconnect_max_s * clock.NS_PER_S)
            else:
                self._try_open(pub)
                return
        if self.hb.due(now):
            self._heartbeat(pub, now)
        retry_s = 0.01 if self.opener is not None else (self.retry_at_ns - now) / clock.NS_PER_S
        stop.wait(max(0.0, min(self.hb.wait_s(clock.now_ns()), retry_s, 0.1)))

    def _try_open(self, pub: StreamPublisher) -> None:
        if self.attempts:
            pub.reconnected()
        self.attempts += 1
        self.opener = Opener(self.device, self.cfg, f"{self.source}-video")
        self.opener.start()

    def _opened(self, pub: StreamPublisher, cap: cv2.VideoCapture | None) -> None:
        """The opener's result: stream from ``cap``, or retry on the backoff schedule."""
        dev = self.device
        self.opener = None
        self.cap = cap
        self.delivered = False
        if self.cap is None:
            delay = self.backoff.next_delay_s()
            self.retry_at_ns = clock.now_ns() + round(delay * clock.NS_PER_S)
            log.warning("video %s: cannot open %s, retrying in %.1f s",
                        self.source, dev.target, delay)
            return
        self.played = None
        self.opened_ns = clock.now_ns()
        self.pacer = self._pacer(self.cap)
        log.info("video %s: %s %s", self.source,
                 "reopened" if self.attempts > 1 else "opened", dev.target)
        if self.attempts == 1:
            readiness.report("ready")

    def _pacer(self, cap: cv2.VideoCapture) -> Pacer | None:
        """Files decode far faster than real time: pace them at their own rate."""
        if self.device.kind != "file":
            return None
        return Pacer(file_fps(cap.get(cv2.CAP_PROP_FPS), self.cfg.fps))

    # ------------------------------------------------------------------ streaming

    def _stream_one(self, stop: threading.Event, pub: StreamPublisher,
                    cap: cv2.VideoCapture) -> None:
        """Publish one frame, or heartbeats while none is due; handle the source's end."""
        if self.pacer is not None:
            due = self.pacer.deadline_ns(clock.now_ns())
            if not self._wait_until(stop, pub, due):
                return
            self.pacer.advance()
            ok = cap.grab()
            t_ns = clock.now_ns()  # the grab time is the frame's capture time
            image = cap.retrieve()[1] if ok else None
        else:
            if self.grabber is None:
                self.grabber = Grabber(cap, f"{self.source}-video")
                self.grabber.start()
            got = self.grabber.take(self.hb.wait_s(clock.now_ns()))
            for _ in range(self.grabber.unreported_skips()):
                pub.drop("backlog")
            if got is None:
                wm = self.grabber.watermark()
                if wm is not None and self.hb.due(wm):
                    self._heartbeat(pub, wm)
                return
            t_ns, image = got
        if image is not None:
            self.delivered = True
            pub.grabbed()
            self._publish(pub, image, t_ns)
            self.hb.sent(t_ns)
            return
        self._release()
        self._source_ended()

    def _wait_until(self, stop: threading.Event, pub: StreamPublisher, due_ns: int) -> bool:
        """Heartbeat until ``due_ns``; False if ``stop`` was set meanwhile."""
        while True:
            now = clock.now_ns()
            if now >= due_ns:
                return True
            if self.hb.due(now):
                self._heartbeat(pub, now)
            if stop.wait(min((due_ns - now) / clock.NS_PER_S, self.hb.wait_s(clock.now_ns()))):
                return False

    def _heartbeat(self, pub: StreamPublisher, watermark_ns: int) -> None:
        pub.heartbeat(watermark_ns)
        self.hb.sent(watermark_ns)

    def _release(self) -> None:
        """Stop the grabber (if any) and release the source."""
        grabber, self.grabber = self.grabber, None
        if grabber is not None and not grabber.finish():
            # Stuck in a network read: leave the capture to the daemon thread rather than
            # release it under its feet (READ_TIMEOUT_MS bounds how long it stays).
            log.warning("video %s: the grab thread did not stop within 1 s", self.source)
            self.cap = None
            return
        if self.cap is not None:
            self.cap.release()
        self.cap = None

    def _source_ended(self) -> None:
        dev, cfg = self.device, self.cfg
        if dev.kind == "file" and cfg.loop and self.delivered:
            self.delivered = False
            self.cap = open_source(dev, cfg)
            if self.cap is not None:
                self.pacer = self._pacer(self.cap)
                return
        if dev.kind == "file" and not cfg.loop:
            self.played = _file_signature(dev)
            log.info("video %s: file %s ended; heartbeats only until it changes",
                     self.source, dev.target)
        else:
            log.warning("video %s: source %s failed; reconnecting", self.source, dev.target)
        # A source that delivered frames for STABLE_NS is retried at once; one that failed
        # sooner (it opens, then sends garbage, stalls, or drops the connection after a frame)
        # waits its backoff, like one that cannot be opened, instead of a tight loop.
        now = clock.now_ns()
        if self.delivered and now - self.opened_ns >= STABLE_NS:
            self.backoff.reset()
            delay = 0.0
        else:
            delay = self.backoff.next_delay_s()
        self.retry_at_ns = now + round(delay * clock.NS_PER_S)

    def _publish(self, pub: StreamPublisher, image: np.ndarray, t_ns: int) -> None:
        cfg = self.cfg
        try:
            frame = fit(image, cfg.width, cfg.height)
        except cv2.error:
            pub.drop("convert")
            return
        if cfg.encoding == "jpeg":
            ok, buf = cv2.imencode(".jpg", frame,
                                   [cv2.IMWRITE_JPEG_QUALITY, min(cfg.jpeg_quality, 100)])
            if not ok:
                pub.drop("encode")
                return
            data = buf.tobytes()
            pub.send(lambda seq: self.plane.message(self.source, seq, t_ns, data, encoding="jpeg",
                                                    shape=frame.shape))
        else:
            pub.send(lambda seq: self.plane.message(self.source, seq, t_ns, frame, encoding="raw",
                                                    shape=frame.shape))


def _file_signature(dev: Device) -> tuple[float, int] | None:
    try:
        st = os.stat(str(dev.target))
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


def main(source: str, cfg: VideoConfig, bus: BusConfig, stop: threading.Event, *,
         grid: tuple[int, int] | None = None, hold_ms: int = 3000) -> int:
    return VideoCapture(source, cfg, bus, grid=grid, hold_ms=hold_ms).run(stop)
