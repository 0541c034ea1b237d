"""``streamfuse label``: publish one label message (docs/protocol.md, "label").

``streamfuse label SOURCE LABEL`` says "from now on SOURCE shows LABEL" (open-ended:
until the source's next label message); ``--for S`` makes it the span
``[now, now + S)``; ``streamfuse label SOURCE --stop`` ends an open-ended label. ``--at``
gives the start as epoch nanoseconds instead of now, for tools that know when a
thing began (a key pressed in the console, a script labelling a replay as it plays).

"Now" is read when the command starts, before it connects, so the label starts at
the moment it was asked for. The source must be known: a ``[[sources]]`` name, or a
source whose captured streams are heard on ``bus.output`` within a short wait (a
replay, a capture on another host). Anything else is bad usage (exit 2) and
nothing is published.
"""

from __future__ import annotations

import logging
import math
import threading

import zmq

from streamfuse import clock
from streamfuse.config import Config
from streamfuse.wire import codec, topics
from streamfuse.wire.codec import T_MAX_NS, T_MIN_NS
from streamfuse.wire.sockets import LINGER_MS, connect_endpoint, connect_sub

log = logging.getLogger("streamfuse.label")


class LabelUsageError(ValueError):
    """Bad arguments: exit 2 with this one line, nothing published."""


def build_message(source: str, label: str | None, now_ns: int, *, at: int | None = None,
                  duration: float | None = None, stop: bool = False) -> codec.Message:
    """The label message asked for: ``label`` on ``source`` from ``at`` (else ``now_ns``),
    for ``duration`` seconds (else open-ended), or with ``stop`` the end of the source's
    open label (raises :class:`LabelUsageError` naming the flag)."""
    why = topics.name_problem(source)
    if why:
        raise LabelUsageError(f"source: {why}")
    start = now_ns if at is None else at
    if not T_MIN_NS <= start < T_MAX_NS:
        raise LabelUsageError(f"--at {start}: not epoch nanoseconds between 2000 and 2200")
    if stop:
        if label is not None or duration is not None:
            raise LabelUsageError("--stop takes no LABEL and no --for")
        return codec.label_stop_message(source, 0, start)
    if label is None:
        raise LabelUsageError("give a LABEL, or --stop to end the source's open label")
    why = codec.label_problem(label)
    if why:
        raise LabelUsageError(f"label {label!r}: {why}")
    end = None
    if duration is not None:
        if not (math.isfinite(duration) and 0 < duration <= 86_400):
            raise LabelUsageError(f"--for {duration}: a number of seconds > 0 and <= 86400")
        end = start + round(duration * clock.NS_PER_S)
    return codec.label_message(source, 0, start, end, label)


def source_heard(ctx: zmq.Context, cfg: Config, source: str, wait_s: float) -> bool:
    """True when ``source`` publishes a captured stream on ``bus.output`` within ``wait_s``."""
    sub = connect_sub(ctx, cfg.bus, [topics.topic(source, s) for s in topics.CAPTURE_STREAMS])
    try:
        deadline = clock.monotonic_ns() + round(wait_s * clock.NS_PER_S)
        while clock.monotonic_ns() < deadline:
            if sub.poll(50):
                parts = sub.recv_multipart()
                try:
                    codec.decode(parts)
                except codec.DecodeError:
                    continue
                return True
        return False
    finally:
        sub.close(linger=0)


def publish(ctx: zmq.Context, cfg: Config, msg: codec.Message) -> bool:
    """Send ``msg`` to ``bus.input`` once the broker is reached; False when it is not."""
    from streamfuse.record.replay import MONITOR_EVENTS, _wait_connected

    sock = ctx.socket(zmq.XPUB)  # an XPUB learns when the broker's subscriptions reach it
    sock.linger = LINGER_MS
    mon = sock.get_monitor_socket(MONITOR_EVENTS)
    try:
        connect_endpoint(sock, cfg.bus.input, cfg.bus)
        if not _wait_connected(sock, mon, cfg.bus.input, threading.Event()):
            return False
        sock.send_multipart(codec.encode(msg))
        sock.close(linger=max(LINGER_MS, 2000))
        return True
    finally:
        for s in (mon, sock):
            if not s.closed:
                s.close(linger=0)
