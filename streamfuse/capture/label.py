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

import argparse
import logging
import math
import sys
import threading

import zmq

from streamfuse import clock
from streamfuse.config import Config, ConfigError
from streamfuse.wire import codec, topics
from streamfuse.wire.codec import T_MAX_NS, T_MIN_NS
from streamfuse.wire.schema import LabelHeader
from streamfuse.wire.sockets import LINGER_MS, connect_endpoint, connect_sub

log = logging.getLogger("streamfuse.label")

HEAR_WAIT_S = 3.0  # how long an unconfigured source may stay silent before it is unknown
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class LabelUsageError(ValueError):
    """Bad arguments: exit 2 with this one line, nothing published."""


def build_message(args: argparse.Namespace, now_ns: int) -> codec.Message:
    """The label message the arguments ask for (raises :class:`LabelUsageError`)."""
    why = topics.name_problem(args.source)
    if why:
        raise LabelUsageError(f"source: {why}")
    start = now_ns if args.at is None else args.at
    if not T_MIN_NS <= start < T_MAX_NS:
        raise LabelUsageError(f"--at {start}: not epoch nanoseconds between 2000 and 2200")
    if args.stop:
        if args.label is not None or args.duration is not None:
            raise LabelUsageError("--stop takes no LABEL and no --for")
        return codec.label_stop_message(args.source, 0, start)
    if args.label is None:
        raise LabelUsageError("give a LABEL, or --stop to end the source's open label")
    why = codec.label_problem(args.label)
    if why:
        raise LabelUsageError(f"label {args.label!r}: {why}")
    end = None
    if args.duration is not None:
        if not (math.isfinite(args.duration) and 0 < args.duration <= 86_400):
            raise LabelUsageError(f"--for {args.duration}: a number of seconds > 0 and <= 86400")
        end = start + round(args.duration * clock.NS_PER_S)
    return codec.label_message(args.source, 0, start, end, args.label)


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


def cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse label SOURCE LABEL [--for S] [--at T_NS]`` / ``label SOURCE --stop``."""
    now = clock.now_ns()
    try:
        msg = build_message(args, now)
    except LabelUsageError as e:
        raise ConfigError(str(e)) from None
    configured = [s.name for s in cfg.sources]
    with zmq.Context() as ctx:
        if args.source not in configured and not source_heard(ctx, cfg, args.source, args.wait):
            known = ", ".join(configured) or "none"
            raise ConfigError(
                f"unknown source {args.source!r}: not configured ([[sources]]: {known}) "
                f"and nothing heard from it on {cfg.bus.output} within {args.wait:g} s"
            )
        if not publish(ctx, cfg, msg):
            print(
                f"streamfuse label: cannot reach the bus at {cfg.bus.input} "
                "(is the daemon running?)",
                file=sys.stderr,
            )
            return EXIT_FAIL
    h = msg.header
    assert isinstance(h, LabelHeader)  # build_message makes nothing else
    what = (
        "stop"
        if h.stop
        else f"{h.label!r} " + (f"until {h.t_end_ns}" if h.t_end_ns else "open-ended")
    )
    log.info("%s: %s from %d", msg.topic, what, h.t_ns)
    return EXIT_OK
