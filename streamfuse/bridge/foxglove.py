"""``streamfuse foxglove``: the bus as a live Foxglove WebSocket server ([foxglove] in the config).

A child of ``streamfuse run`` when ``foxglove.listen`` is set. It subscribes to everything on
the bus and publishes each message on the same channel, with the same schema and message
data, as a recording holds it (:mod:`streamfuse.record.layout`), through ``foxglove-sdk``'s
server. It can only lose data, never slow anyone down: its SUB socket has a small queue
(the broker drops for it when it lags), video frames beyond ``foxglove.max_fps`` per topic
are skipped before any work is done, messages nobody subscribed to are not encoded, and the
server keeps a bounded backlog per client, dropping what a slow client cannot take.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq

from streamfuse import clock
from streamfuse.config import Config
from streamfuse.frameplane.inline import Inliner
from streamfuse.record import layout
from streamfuse.wire.sockets import connect_sub

log = logging.getLogger("streamfuse.foxglove")

STOP_WAIT_S = 0.5
SUB_HWM = 200  # messages queued for the bridge before the broker drops for it
# Messages queued per client before the server drops for it: over a second of audio
# blocks, and at most ~60 MB of raw VGA frames for a client that stopped reading.
CLIENT_BACKLOG = 64
_THROTTLE_SWEEP_MIN = 256  # topics in the frame throttle before the first sweep


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
    with ``log(data, log_time=)`` and ``has_sinks()`` (a ``foxglove.Channel`` in service)."""

    def __init__(self, channel_factory: Any, max_fps: float) -> None:
        self.make = channel_factory
        self.throttle = Throttle(max_fps)
        self.inliner = Inliner()
        self.channels: dict[tuple[str, str], Any] = {}
        self.sent = self.skipped = self.bad = 0

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
            ch = self.channels[(topic, lay)] = self.make(layout.channel_spec(topic, lay))
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
    bridge = Bridge(_sdk_channel, cfg.foxglove.max_fps)
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
            "Foxglove bridge: %d messages sent, %d frames skipped (max_fps), %d malformed",
            bridge.sent,
            bridge.skipped,
            bridge.bad,
        )
