"""``streamfuse align``: one aligner (:mod:`streamfuse.align.node`), standalone."""

from __future__ import annotations

import argparse

from streamfuse.align import node
from streamfuse.commands.node import serve_metrics
from streamfuse.config import Config
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    signals = Signals()
    serve_metrics(cfg, node.log)
    return node.main(cfg, stop=signals.stop)
