"""What every capture process shares: one stream's publisher, its counters, backoff.

A :class:`StreamPublisher` owns the sequence counter of one topic
(``<source>/<stream>``): data messages and heartbeats on that topic share it, so
a subscriber sees ``seq`` 0, 1, 2, ... and any gap means loss. It counts in plain
integers (logged at exit) and mirrors them into :mod:`streamfuse.metrics`
through cached label children (a labelled ``inc`` costs microseconds).

:class:`Backoff` is the pure reconnect policy the video and audio captures use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from streamfuse import clock, metrics
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import send_parts

NODE = "capture"


@dataclass
class Counts:
    """Plain counters of one capture, logged at exit."""

    grabbed: int = 0
    published: int = 0
    heartbeats: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    overflows: int = 0

    def line(self) -> str:
        drops = sum(self.dropped.values())
        why = " ".join(f"{k}={v}" for k, v in sorted(self.dropped.items()))
        extra = f" ({why})" if why else ""
        return (f"grabbed={self.grabbed} published={self.published} heartbeats={self.heartbeats} "
                f"dropped={drops}{extra} reconnects={self.reconnects} overflows={self.overflows}")


class StreamPublisher:
    """Publish one stream of one source on a PUB socket (created by the caller's thread).

    ``build(seq)`` callables get the next sequence number; :meth:`send` encodes
    (validating) and sends with ``copy=False`` (:func:`~streamfuse.wire.sockets.send_parts`).
    A send that would block at the high-water mark drops the message and counts it
    (``reason="hwm"``): a capture must never stall its device.
    """

    def __init__(self, sock: zmq.Socket, source: str, stream: str) -> None:
        self.sock = sock
        self.source = source
        self.stream = stream
        self.topic = topics.topic(source, stream)
        self.seq = 0
        self.last_t_ns: int | None = None  # t_ns of the last message sent: the stream's watermark
        self.counts = Counts()
        self._out = metrics.messages_out.labels(NODE, self.topic)
        self._bytes = metrics.bytes_out.labels(NODE, self.topic)
        self._grabbed = metrics.grabbed.labels(source, stream)
        self._reconnects = metrics.reconnects.labels(source, stream)
        self._log = logging.getLogger(f"streamfuse.capture.{stream}")

    def send(self, build: Callable[[int], Message]) -> bool:
        """Build the message with the next ``seq``, send it; False when dropped."""
        msg = build(self.seq)
        parts = codec.encode(msg)
        self.seq += 1  # a dropped message still takes its number: the gap shows the loss
        try:
            send_parts(self.sock, parts, zmq.NOBLOCK)
        except zmq.Again:
            self.drop("hwm")
            return False
        self.last_t_ns = msg.t_ns
        if msg.kind == "heartbeat":
            self.counts.heartbeats += 1
        else:
            self.counts.published += 1
        self._out.inc()
        self._bytes.inc(sum(len(p) for p in parts))
        return True

    def heartbeat(self, watermark_ns: int) -> bool:
        """Promise: nothing older than ``watermark_ns`` will follow on this stream."""
        return self.send(lambda seq: codec.heartbeat_message(self.source, self.stream, seq,
                                                             watermark_ns))

    def grabbed(self, n: int = 1) -> None:
        self.counts.grabbed += n
        self._grabbed.inc(n)

    def reconnected(self) -> None:
        self.counts.reconnects += 1
        self._reconnects.inc()

    def drop(self, reason: str) -> None:
        """Count a message lost or rejected before (or instead of) publication."""
        self.counts.dropped[reason] = self.counts.dropped.get(reason, 0) + 1
        metrics.dropped.labels(NODE, self.topic, reason).inc()


class Backoff:
    """Exponential backoff: ``initial_s``, doubled per failure, capped at ``max_s``.

    Pure: the caller asks :meth:`next_delay_s` after each failure and calls
    :meth:`reset` after a success.
    """

    def __init__(self, max_s: float, *, initial_s: float = 0.1, factor: float = 2.0) -> None:
        self.initial_s = min(initial_s, max_s)
        self.max_s = max_s
        self.factor = factor
        self.failures = 0

    def next_delay_s(self) -> float:
        delay = min(self.initial_s * self.factor ** self.failures, self.max_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Heartbeats:
    """When a heartbeat is due: at least every ``interval_ns`` since the last
    message, and just after each window end on the aligner's grid.

    ``grid = (window_ns, hop_ns)`` of ``[align]``: windows end at
    ``k * hop + window``. A window closes when every stream's watermark has
    passed its end (docs/protocol.md), so a heartbeat right after each end
    closes it at once instead of after the stream's next frame (67 ms at 15
    fps) or its next periodic heartbeat. Pure: the caller passes ``now_ns``.
    """

    def __init__(self, interval_ns: int, grid: tuple[int, int] | None = None) -> None:
        self.interval_ns = interval_ns
        self.grid = grid
        self.last_ns: int | None = None

    def _next_end(self, t_ns: int) -> int | None:
        """The first window end strictly after ``t_ns``, or None without a grid."""
        if self.grid is None:
            return None
        window, hop = self.grid
        return ((t_ns - window) // hop + 1) * hop + window

    def _due_at(self) -> int | None:
        if self.last_ns is None:
            return None
        due = self.last_ns + self.interval_ns
        end = self._next_end(self.last_ns)
        return due if end is None else min(due, end)

    def due(self, now_ns: int) -> bool:
        at = self._due_at()
        return at is None or now_ns >= at

    def sent(self, now_ns: int) -> None:
        self.last_ns = now_ns

    def wait_s(self, now_ns: int) -> float:
        """Seconds until the next heartbeat is due (0 when due now)."""
        at = self._due_at()
        if at is None:
            return 0.0
        return max(0.0, (at - now_ns) / clock.NS_PER_S)
