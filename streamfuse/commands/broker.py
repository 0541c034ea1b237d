"""``streamfuse broker``: the bus alone."""

from __future__ import annotations

import argparse

from streamfuse.config import Config
from streamfuse.service import broker
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    return broker.main(cfg, stop=Signals().stop)
