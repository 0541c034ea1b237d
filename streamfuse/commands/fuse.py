"""``streamfuse fuse``: one fusion worker (:mod:`streamfuse.fusion.node`), standalone."""

from __future__ import annotations

import argparse

from streamfuse.commands.node import serve_metrics
from streamfuse.config import Config
from streamfuse.fusion import node
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    signals = Signals(reload=True)
    serve_metrics(cfg, node.log)
    return node.main(cfg, stop=signals.stop, reload=signals.reload)
