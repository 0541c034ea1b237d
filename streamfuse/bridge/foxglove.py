"""``streamfuse foxglove``: the bus as a live Foxglove WebSocket server ([foxglove] in the config).

A child of ``streamfuse run`` when ``foxglove.listen`` is set. It subscribes to everything on
the bus and publishes each message on the same channel, with the same schema and message
data, as a recording holds it (:mod:`streamfuse.record.layout`), through ``foxglove-sdk``'s
server. It can only lose data, never slow anyone down: its SUB socket has a small queue
(the broker drops for it when it lags), video frames beyond ``foxglove.max_fps`` per topic
are skipped before any work is done, messages nobody subscribed to are not encoded, and the
server keeps a bounded backlog per client, dropping what a slow client cannot take.

Channels are bounded too, since any publisher may invent topics: once :data:`MAX_CHANNELS`
are advertised, a message on a topic without a channel is not bridged unless its source is
configured (``[[sources]]``); such messages are counted (``Bridge.unbridged``,
``streamfuse_messages_dropped_total{node="foxglove", topic="_other", reason="channels"}``)
and logged at most once a minute. Advertised channels stay advertised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import zmq

from streamfuse import clock, metrics
from streamfuse.config import Config
from streamfuse.frameplane.inline import Inliner
from streamfuse.names import OTHER
from streamfuse.record import layout
from streamfuse.wire import topics
from streamfuse.wire.sockets import connect_sub

log = logging.getLogger("streamfuse.foxglove")

STOP_WAIT_S = 0.5
SUB_HWM = 200  # messages queued for the bridge before the broker drops for it
# Messages queued per client before the server drops for it: over a second of audio
# blocks, and at most ~60 MB of raw VGA frames for a client that stopped reading.
CLIENT_BACKLOG = 64
_THROTTLE_SWEEP_MIN = 256  # topics in the frame throttle before the first sweep
# Channels advertised before new topics of unconfigured sources are no longer bridged. A
# source has at most 6 topics (video, audio, text, label, class, shadow), video in up to two
# layouts: 1,024 channels serve well over a hundred sources, far more than a daemon aligns
# (a few to a few dozen), while every channel is advertised to every client (with its
# schema, a few KB) and listed in Foxglove's topic list, which thousands make unusable.
MAX_CHANNELS = 1024
_LOG_EVERY_NS = 60 * clock.NS_PER_S  # at most one line this often about unbridged messages


class Throttle:
    """At most ``max_fps`` messages per second and topic (the first one passes).

    A topic whose last frame is ``min_gap_ns`` old passes exactly as one never seen,
    so such entries are dropped whenever the table has doubled since the last sweep:
    topics a publisher invents cost nothing once they fall silent.
    """

    def __init__(self, max_fps: float) -> None:
        self.min_gap_ns = int(clock.NS_PER_S / max_fps)
        self.last: dict[bytes, int] = {}
        self._sweep_at = _THROTTLE_SWEEP_MIN

    def allow(self, topic: bytes, now_ns: int) -> bool:
        last = self.last.get(topic)
        if last is not None and now_ns - last < self.min_gap_ns:
            return False
        self.last[topic] = now_ns
        if len(self.last) >= self._sweep_at:
            gap = self.min_gap_ns
            self.last = {t: v for t, v in self.last.items() if now_ns - v < gap}
            self._sweep_at = max(_THROTTLE_SWEEP_MIN, 2 * len(self.last))
        return True


class Bridge:
    """Wire messages in, Foxglove channels out. ``channel_factory(spec)`` makes a channel
    with ``log(data, log_time=)`` and ``has_sinks()`` (a ``foxglove.Channel`` in service).
    ``keep``: the configured source names, whose topics always get a channel (even beyond
    :data:`MAX_CHANNELS`); beyond it, other new topics are not bridged (``unbridged``)."""

    def __init__(self, channel_factory: Any, max_fps: float, keep: Iterable[str] = ()) -> None:
        self.make = channel_factory
        self.throttle = Throttle(max_fps)
        self.inliner = Inliner()
        self.keep = frozenset(keep)
        self.channels: dict[tuple[str, str], Any] = {}
        self._topics: set[bytes] = set()  # topics with a channel (any layout)
        self.sent = self.skipped = self.bad = self.unbridged = 0
        self._unbridged_logged = 0
        self._log_after = 0  # the next line about unbridged messages not before this
        self._unbridged_metric: Any = None

    def _configured(self, topic: bytes) -> bool:
        """A topic of a configured source: ``room1/video``, ``class/room1``, ..."""
        if not self.keep:
            return False
        try:
            source, stream = topics.split(topic.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        return source in self.keep and stream in topics.STREAMS

    def _full(self, topic: bytes, now_ns: int) -> bool:
        """True (and counted) when ``topic`` may get no new channel: the cap is reached
        and its source is not configured."""
        if len(self.channels) < MAX_CHANNELS or self._configured(topic):
            return False
        self.unbridged += 1
        if self._unbridged_metric is None:
            self._unbridged_metric = metrics.dropped.labels(
                node="foxglove", topic=OTHER, reason="channels")
        self._unbridged_metric.inc()
        if now_ns >= self._log_after:
            self._log_after = now_ns + _LOG_EVERY_NS
            log.warning("Foxglove bridge: %d channels advertised (the most it keeps): %d "
                        "messages on new topics of unconfigured sources not bridged since the "
                        "last line (latest %r, %d in all)", len(self.channels),
                        self.unbridged - self._unbridged_logged,
                        topic.decode("utf-8", "replace")[:100], self.unbridged)
            self._unbridged_logged = self.unbridged
        return True

    def publish(self, parts: Sequence[Any], now_ns: int) -> bool:
        """Publish one multipart message; False when it was skipped or malformed."""
        if len(parts) < 2:
            self.bad += 1
            return False
        topic_b = bytes(parts[0])
        header = memoryview(parts[1])
        try:
            info = layout.read_info(header)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.bad += 1
            return False
        if info.t_ns < 0:  # no protobuf Timestamp nor Foxglove log time holds it
            self.bad += 1
            return False
        if topic_b not in self._topics and self._full(topic_b, now_ns):
            return False  # before any work: no throttle entry, no frame read from a ring
        if info.kind == "frame" and not self.throttle.allow(topic_b, now_ns):
            self.skipped += 1
            return False
        if info.kind == "frame":
            # Foxglove gets pixels: a frame by reference is read from its ring (only the
            # frames max_fps lets through, so the copy costs little).
            got = self.inliner.parts(parts)
            if got is None:
                self.skipped += 1
                return False
            if got is not parts:
                parts = got
                header = memoryview(parts[1])
                info = layout.read_info(header)
        payload = [memoryview(p) for p in parts[2:]]
        lay = layout.choose(info, payload)
        topic = topic_b.decode("utf-8", "replace")
        ch = self.channels.get((topic, lay))
        if ch is None:
            if topic_b in self._topics and self._full(topic_b, now_ns):
                return False  # a known topic in a new layout, beyond the cap
            ch = self.channels[(topic, lay)] = self.make(layout.channel_spec(topic, lay))
            self._topics.add(topic_b)
        if not ch.has_sinks():
            return False
        ch.log(b"".join(layout.encode(lay, info, header, payload)), log_time=info.t_ns)
        self.sent += 1
        return True


def _sdk_channel(spec: layout.ChannelSpec) -> Any:
    import foxglove

    return foxglove.Channel(
        spec.topic,
        message_encoding=spec.message_encoding,
        metadata=spec.metadata,
        schema=foxglove.Schema(
            name=spec.schema_name, encoding=spec.schema_encoding, data=spec.schema_data
        ),
    )


def serve(cfg: Config, stop: Any) -> None:
    """Run the server and the bus loop until ``stop`` (an Event) is set."""
    import foxglove

    host, _, port = cfg.foxglove.listen.rpartition(":")
    server = foxglove.start_server(
        name="streamfuse",
        host=host.strip("[]"),
        port=int(port),
        message_backlog_size=CLIENT_BACKLOG,
    )
    log.info("Foxglove WebSocket server on ws://%s:%d", host, server.port)
    bridge = Bridge(_sdk_channel, cfg.foxglove.max_fps, keep=[s.name for s in cfg.sources])
    ctx = zmq.Context()
    try:
        sub = connect_sub(ctx, cfg.bus, [""], hwm=SUB_HWM)
        with sub:
            while not stop.is_set():
                if not sub.poll(100):
                    continue
                for _ in range(1000):
                    try:
                        parts = sub.recv_multipart(copy=False, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    bridge.publish(parts, clock.now_ns())
    finally:
        ctx.destroy(linger=0)
        # A client that stopped reading can hold the server's close handshake; the
        # supervisor's stop budget is short, so the server gets a moment and no more.
        stopper = threading.Thread(target=server.stop, name="foxglove-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_WAIT_S)
        log.info(
            "Foxglove bridge: %d messages sent, %d frames skipped (max_fps), %d malformed, "
            "%d not bridged (%d channels; at most %d but for configured sources')",
            bridge.sent,
            bridge.skipped,
            bridge.bad,
            bridge.unbridged,
            len(bridge.channels),
            MAX_CHANNELS,
        )
