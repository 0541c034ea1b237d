"""``streamfuse tail``, ``streamfuse send`` and ``streamfuse devices``.

``tail`` prints, once a second, one line per topic: message rate, sequence gaps
and latency (``now - t_ns``, p50 and max) of the data messages, e.g.::

    room1/video   30.0 msg/s  gaps 0  latency p50 1.3 ms max 4.0 ms  hb 0  bad 0

With ``--classes`` (or a ``--topic`` under ``class/``) it prints each
classification's JSON payload as one line instead. ``--count N`` exits after N
lines, ``--duration S`` after S seconds.

It reads ``bus.results`` (classifications only) unless ``--topic`` names
something only ``bus.output`` carries (``room1/``, ``room1/video``), or
``--endpoint`` says where.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

import zmq

from streamfuse import clock
from streamfuse.config import BusConfig, Config, ConfigError, TextConfig
from streamfuse.stats import percentile
from streamfuse.wire import codec, topics
from streamfuse.wire.sockets import connect_endpoint, connect_sub, max_message_bytes

log = logging.getLogger("streamfuse.tools")

SEND_TIMEOUT_S = 3.0


# ----------------------------------------------------------------------------- tail (pure part)


@dataclass
class TopicStats:
    """What one topic did during one reporting period (seq tracking spans periods)."""

    messages: int = 0
    heartbeats: int = 0
    gaps: int = 0
    bad: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    last_seq: int | None = None

    def add(self, seq: int, t_ns: int, now_ns: int, *, heartbeat: bool) -> None:
        if self.last_seq is not None and seq > self.last_seq + 1:
            self.gaps += seq - self.last_seq - 1
        self.last_seq = seq  # a lower seq means the producer restarted: count from there
        if heartbeat:
            self.heartbeats += 1
        else:
            self.messages += 1
            self.latencies_ns.append(now_ns - t_ns)

    def line(self, topic: str, period_s: float) -> str:
        if self.latencies_ns:
            lat = [ns / clock.NS_PER_MS for ns in self.latencies_ns]
            latency = f"latency p50 {percentile(lat, 50):.1f} ms max {max(lat):.1f} ms"
        else:
            latency = "latency -"
        return (f"{topic:<20} {self.messages / period_s:7.1f} msg/s  gaps {self.gaps}  {latency}"
                f"  hb {self.heartbeats}  bad {self.bad}")

    def reset(self) -> None:
        self.messages = self.heartbeats = self.gaps = self.bad = 0
        self.latencies_ns = []


class TailStats:
    """Per-topic statistics; :meth:`report` returns the lines of one period and resets it."""

    def __init__(self) -> None:
        self.topics: dict[str, TopicStats] = {}

    def add(self, msg_topic: str, seq: int, t_ns: int, now_ns: int, *, heartbeat: bool) -> None:
        self.topics.setdefault(msg_topic, TopicStats()).add(seq, t_ns, now_ns, heartbeat=heartbeat)

    def bad(self, msg_topic: str) -> None:
        self.topics.setdefault(msg_topic, TopicStats()).bad += 1

    def report(self, period_s: float) -> list[str]:
        lines = [s.line(t, period_s) for t, s in sorted(self.topics.items())]
        for s in self.topics.values():
            s.reset()
        return lines


# ----------------------------------------------------------------------------- tail (node)


@dataclass(frozen=True)
class TailOptions:
    """What ``streamfuse tail`` prints: ``classes`` (JSON lines) or stream statistics, of the
    topics under ``prefix``, read from ``endpoint`` (see :func:`tail_endpoint`), until
    ``count`` lines or ``duration_s`` seconds (None: until stopped)."""

    prefix: str = ""
    classes: bool = False
    endpoint: str | None = None
    count: int | None = None
    duration_s: float | None = None


def tail_endpoint(bus: BusConfig, topic: str | None, endpoint: str | None = None) -> str:
    """``endpoint``, else bus.results unless ``topic`` is one only bus.output carries."""
    if endpoint:
        return endpoint
    return bus.results if topics.is_result_topic(topic or topics.CLASS_PREFIX) else bus.output


def tail(cfg: Config, opts: TailOptions, stop: threading.Event) -> None:
    """Print lines (:class:`TailOptions`) until ``stop`` is set or the options' limit."""
    deadline = (None if opts.duration_s is None
                else clock.now_ns() + round(opts.duration_s * clock.NS_PER_S))
    count = opts.count
    printed = 0
    max_bytes = max_message_bytes(cfg.bus)
    stats = TailStats()
    endpoint = tail_endpoint(cfg.bus, opts.prefix, opts.endpoint)
    with zmq.Context() as ctx:
        sub = connect_sub(ctx, cfg.bus, [opts.prefix], endpoint=endpoint)
        try:
            next_report = clock.now_ns() + clock.NS_PER_S
            while not stop.is_set():
                now = clock.now_ns()
                if deadline is not None and now >= deadline:
                    break
                wake = min(next_report, deadline) if deadline is not None else next_report
                if sub.poll(max(1, (wake - now) // clock.NS_PER_MS)):
                    parts = sub.recv_multipart(copy=False)
                    if opts.classes:
                        line = _class_line(parts, max_bytes)
                        if line is not None:
                            print(line, flush=True)
                            printed += 1
                    else:
                        _account(stats, parts, max_bytes)
                if not opts.classes and clock.now_ns() >= next_report:
                    period = 1.0 + (clock.now_ns() - next_report) / clock.NS_PER_S
                    for line in stats.report(period):
                        print(line, flush=True)
                        printed += 1
                        if count is not None and printed >= count:
                            break
                    next_report = clock.now_ns() + clock.NS_PER_S
                if count is not None and printed >= count:
                    break
        finally:
            sub.close(linger=0)


def _account(stats: TailStats, parts: list, max_bytes: int) -> None:
    now = clock.now_ns()
    topic = bytes(parts[0].buffer).decode("utf-8", "replace") if parts else "?"
    try:
        msg = codec.decode(parts, max_bytes=max_bytes)
    except codec.DecodeError:
        stats.bad(topic)
        return
    stats.add(msg.topic, msg.header.seq, msg.t_ns, now, heartbeat=msg.kind == "heartbeat")


def _class_line(parts: list, max_bytes: int) -> str | None:
    """The JSON line of a classification, or None for anything else."""
    if not parts or not topics.is_class_topic(bytes(parts[0].buffer)):
        return None
    try:
        msg = codec.decode(parts, max_bytes=max_bytes)
    except codec.DecodeError as e:
        log.warning("tail: malformed classification dropped: %s", e)
        return None
    if msg.kind != "class":
        return None
    try:
        return json.dumps(json.loads(msg.text()), ensure_ascii=False, separators=(", ", ": "))
    except ValueError:
        log.warning("tail: classification payload on %s is not JSON", msg.topic)
        return None


# ----------------------------------------------------------------------------- send


class SendError(Exception):
    """The text capture did not take the message (no answer, or its refusal)."""


def send(cfg: Config, source: str, raw: bytes, timeout_s: float = SEND_TIMEOUT_S) -> None:
    """Hand ``raw`` to ``source``'s text capture (``input = "zmq"``) and wait ``timeout_s`` for
    its answer; raises :class:`SendError` unless it answers ``ok``."""
    from streamfuse.capture.text import text_endpoint

    src = cfg.source(source)
    tcfg = src.text or TextConfig()
    if tcfg.input != "zmq":
        raise ConfigError(f"sources.text.input: source {src.name!r} reads {tcfg.input!r}; "
                          "`streamfuse send` needs input = \"zmq\"")
    endpoint = text_endpoint(tcfg, cfg.bus, src.name)
    with zmq.Context() as ctx:
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.maxmsgsize = max_message_bytes(cfg.bus)  # the answer is one short line
        try:
            connect_endpoint(req, endpoint, cfg.bus)  # keys when the capture is a CurveZMQ server
            req.send(raw)
            if not req.poll(int(timeout_s * 1000)):
                raise SendError(f"no text capture for source {src.name!r} answered at "
                                f"{endpoint} within {timeout_s:g} s "
                                f"(is `streamfuse capture text --source {src.name}` running?)")
            answer = req.recv().decode("utf-8", "replace")
        finally:
            req.close()
    if answer != "ok":
        raise SendError(answer)


# ----------------------------------------------------------------------------- devices


def list_cameras(max_index: int = 64) -> list[str]:
    """Cameras OpenCV can open, probed through ``/dev/video*``."""
    import glob
    import re

    import cv2

    from streamfuse.capture.camera import quiet_opencv

    quiet_opencv()
    found = []
    for dev in sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        m = re.match(r"/dev/video(\d+)$", dev)
        if not m or int(m.group(1)) > max_index:
            continue
        cap = cv2.VideoCapture(int(m.group(1)))
        try:
            if cap.isOpened():
                w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                fps = cap.get(cv2.CAP_PROP_FPS)
                found.append(f"  {m.group(1)}: {dev} {w}x{h} @ {fps:.0f} fps  "
                             f"(device = \"{m.group(1)}\")")
        finally:
            cap.release()
    return found


def list_audio_inputs() -> tuple[list[str], str | None]:
    """PortAudio input devices, and why none could be listed (or None)."""
    try:
        import sounddevice as sd
    except OSError as e:
        return [], f"PortAudio is not available: {e}"
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except sd.PortAudioError as e:
        return [], f"PortAudio error: {e}"
    lines = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] > 0:
            mark = "*" if i == default_in else " "
            lines.append(f" {mark}{i}: {d['name']}  {d['max_input_channels']} ch, "
                         f"{d['default_samplerate']:.0f} Hz  (device = \"{i}\" or \"{d['name']}\")")
    return lines, None
