"""``streamfuse label SOURCE LABEL [--for S] [--at T_NS]`` / ``label SOURCE --stop``
(:mod:`streamfuse.capture.label`)."""

from __future__ import annotations

import argparse
import logging
import sys

import zmq

from streamfuse import clock
from streamfuse.capture.label import LabelUsageError, build_message, publish, source_heard
from streamfuse.config import Config, ConfigError
from streamfuse.wire.schema import LabelHeader

log = logging.getLogger("streamfuse.label")


def run(args: argparse.Namespace, cfg: Config) -> int:
    now = clock.now_ns()  # before connecting: the label starts when it was asked for
    try:
        msg = build_message(args.source, args.label, now, at=args.at, duration=args.duration,
                            stop=args.stop)
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
            return 1
    h = msg.header
    assert isinstance(h, LabelHeader)  # build_message makes nothing else
    what = (
        "stop"
        if h.stop
        else f"{h.label!r} " + (f"until {h.t_end_ns}" if h.t_end_ns else "open-ended")
    )
    log.info("%s: %s from %d", msg.topic, what, h.t_ns)
    return 0
