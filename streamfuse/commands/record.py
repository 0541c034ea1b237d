"""``streamfuse record --out PATH [--topics PREFIX...] [--duration S]``: the bus to MCAP
(:mod:`streamfuse.record.writer`)."""

from __future__ import annotations

import argparse

from streamfuse.config import Config
from streamfuse.record import writer
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    sig = Signals()
    return writer.main(cfg, args.out, topic_prefixes=args.topics, duration=args.duration,
                       stop=sig.stop)
