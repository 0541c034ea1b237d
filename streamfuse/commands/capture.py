"""``streamfuse capture STREAM --source NAME``: one capture process until SIGTERM/SIGINT.

Imports nothing heavy (no torch), so an edge host needs only the light dependencies.
"""

from __future__ import annotations

import argparse

from streamfuse import capture
from streamfuse.config import Config
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    signals = Signals()
    return capture.main(cfg, args.stream, args.source, stop=signals.stop)
