"""``streamfuse demo [--small] [--live] [--cache DIR] [--data DIR] [--keep]``: build data,
train or reuse a model, and run it through the daemon (:mod:`streamfuse.service.demo`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamfuse.config import Config
from streamfuse.service import demo
from streamfuse.signals import Signals
from streamfuse.usage import check_output_dir


def run(args: argparse.Namespace, cfg: Config) -> int:
    cache = demo.cache_dir(args.cache)
    check_output_dir(cache, "--cache" if args.cache else "the demo cache")
    stop = Signals()
    try:
        if args.live:
            return demo.run_live_demo(cfg, cache, stop)
        return demo.run_replay_demo(demo.SMALL if args.small else demo.FULL, cache,
                                    Path(args.data) if args.data else None, stop,
                                    keep=args.keep)
    except demo.DemoFailure as e:
        print(f"streamfuse demo: {e}", file=sys.stderr)
        return 1
