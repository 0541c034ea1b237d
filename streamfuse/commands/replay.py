"""``streamfuse replay FILE... [--rate R | --max] [--loop] [--start S] [--end S]
[--topics PREFIX...] [--restamp]``: recordings onto the bus (:mod:`streamfuse.record.replay`)."""

from __future__ import annotations

import argparse
import math
import sys

from streamfuse.config import Config
from streamfuse.record import reader, replay
from streamfuse.signals import Signals


def bad_timing(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--rate``, ``--start`` and ``--end``, or None."""
    if not args.max and not (math.isfinite(args.rate) and args.rate > 0):
        return "--rate must be a number > 0"
    for flag, v in (("--start", args.start), ("--end", args.end)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            return f"{flag} must be a number of seconds >= 0, got {v}"
    if args.start is not None and args.end is not None and args.end <= args.start:
        return "--end must be after --start"
    return None


def run(args: argparse.Namespace, cfg: Config) -> int:
    problem = bad_timing(args)
    if problem:
        print(f"streamfuse replay: {problem}", file=sys.stderr)
        return 2
    try:
        paths = reader.expand_paths(args.files)
        for p in paths:
            reader.check_file(p)
        reader.check_disjoint(paths)
    except reader.RecordingError as e:
        print(f"streamfuse replay: {e}", file=sys.stderr)
        return 1
    sig = Signals()
    if not args.max:
        # A waking sender must not wait for the reader thread's GIL time slice (5 ms by default).
        sys.setswitchinterval(0.0005)
    reader.reuse_freed_memory()  # every chunk would otherwise page-fault fresh buffers in
    plan = replay.Plan(paths, rate=None if args.max else args.rate, loop=args.loop,
                       start_s=args.start, end_s=args.end, topics=args.topics,
                       restamp=args.restamp)
    try:
        replay.main(cfg, plan, stop=sig.stop)
    except (replay.BusUnreachable, reader.RecordingError) as e:
        print(f"streamfuse replay: {e}", file=sys.stderr)
        return 1
    return 0
