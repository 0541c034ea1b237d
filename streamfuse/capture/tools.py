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

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import zmq

from streamfuse import clock
from streamfuse.config import BusConfig, Config, ConfigError, TextConfig
from streamfuse.stats import percentile
from streamfuse.wire import codec, topics
from streamfuse.wire.sockets import connect_endpoint, connect_sub, max_message_bytes

log = logging.getLogger("streamfuse.tools")

SEND_TIMEOUT_S = 3.0
EXIT_OK, EXIT_FAIL = 0, 1


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


def tail_cli(args: argparse.Namespace, cfg: Config) -> int:
    from streamfuse.signals import Signals

    stop = Signals().stop
    classes = bool(args.classes or (args.topic and topics.is_class_topic(args.topic)))
    prefix = args.topic or ""
    if args.count is not None and args.count <= 0:
        raise ConfigError("--count: expected a positive number")
    deadline = (None if args.duration is None
                else clock.now_ns() + round(args.duration * clock.NS_PER_S))
    printed = 0
    max_bytes = max_message_bytes(cfg.bus)
    stats = TailStats()
    with zmq.Context() as ctx:
        sub = connect_sub(ctx, cfg.bus, [prefix], endpoint=tail_endpoint(args, cfg.bus))
        try:
            next_report = clock.now_ns() + clock.NS_PER_S
            while not stop.is_set():
                now = clock.now_ns()
                if deadline is not None and now >= deadline:
                    break
                wake = min(next_report, deadline) if deadline is not None else next_report
                if sub.poll(max(1, (wake - now) // clock.NS_PER_MS)):
                    parts = sub.recv_multipart(copy=False)
                    if classes:
                        line = _class_line(parts, max_bytes)
                        if line is not None:
                            print(line, flush=True)
                            printed += 1
                    else:
                        _account(stats, parts, max_bytes)
                if not classes and clock.now_ns() >= next_report:
                    period = 1.0 + (clock.now_ns() - next_report) / clock.NS_PER_S
                    for line in stats.report(period):
                        print(line, flush=True)
                        printed += 1
                        if args.count is not None and printed >= args.count:
                            break
                    next_report = clock.now_ns() + clock.NS_PER_S
                if args.count is not None and printed >= args.count:
                    break
        finally:
            sub.close(linger=0)
    return EXIT_OK


def tail_endpoint(args: argparse.Namespace, bus: BusConfig) -> str:
    """``--endpoint``, else bus.results unless the topic is one only bus.output carries."""
    if getattr(args, "endpoint", None):
        return str(args.endpoint)
    return bus.results if topics.is_result_topic(args.topic or topics.CLASS_PREFIX) else bus.output


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


def send_cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse send TEXT --source NAME``: one message to that source's text capture."""
    from streamfuse.capture.text import text_endpoint

    src = cfg.source(args.source)
    tcfg = src.text or TextConfig()
    if tcfg.input != "zmq":
        raise ConfigError(f"sources.text.input: source {src.name!r} reads {tcfg.input!r}; "
                          "`streamfuse send` needs input = \"zmq\"")
    endpoint = text_endpoint(tcfg, cfg.bus, src.name)
    # argv holds undecodable bytes as surrogates: send the user's exact bytes.
    raw = os.fsencode(args.text)
    with zmq.Context() as ctx:
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.maxmsgsize = max_message_bytes(cfg.bus)  # the answer is one short line
        try:
            connect_endpoint(req, endpoint, cfg.bus)  # keys when the capture is a CurveZMQ server
            req.send(raw)
            timeout_s = getattr(args, "timeout", SEND_TIMEOUT_S)
            if not req.poll(int(timeout_s * 1000)):
                print(f"streamfuse send: no text capture for source {src.name!r} answered at "
                      f"{endpoint} within {timeout_s:g} s "
                      f"(is `streamfuse capture text --source {src.name}` running?)",
                      file=sys.stderr)
                return EXIT_FAIL
            answer = req.recv().decode("utf-8", "replace")
        finally:
            req.close()
    if answer != "ok":
        print(f"streamfuse send: {answer}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


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


def devices_cli(args: argparse.Namespace, cfg: Config) -> int:
    cams = list_cameras()
    print("cameras:")
    print("\n".join(cams) if cams else "  no cameras found")
    mics, why = list_audio_inputs()
    print("audio inputs:")
    print("\n".join(mics) if mics
          else f"  no audio input devices found{f' ({why})' if why else ''}")
    return EXIT_OK
