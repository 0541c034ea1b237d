"""``streamfuse foxglove``: the bus as a live Foxglove WebSocket server
(:mod:`streamfuse.bridge.foxglove`)."""

from __future__ import annotations

import argparse
import sys

from streamfuse.bridge.foxglove import serve
from streamfuse.config import Config
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    if not cfg.foxglove.listen:
        print('streamfuse foxglove: foxglove.listen is not set ("" = off)', file=sys.stderr)
        return 2
    sig = Signals()
    try:
        serve(cfg, sig.stop)
    except (OSError, RuntimeError) as e:
        print(f"streamfuse foxglove: cannot serve {cfg.foxglove.listen}: {e}", file=sys.stderr)
        return 1
    return 0
