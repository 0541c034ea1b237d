"""``streamfuse run``: the daemon (:mod:`streamfuse.service.supervisor`)."""

from __future__ import annotations

import argparse
import sys

from streamfuse.config import Config
from streamfuse.service.supervisor import RuntimeFailure, Supervisor, check_fusion, log
from streamfuse.signals import Signals


def run(args: argparse.Namespace, cfg: Config) -> int:
    signals = Signals(reload=True)
    try:
        check_fusion(cfg)
        return Supervisor(cfg, signals=signals).run()
    except RuntimeFailure as e:
        log.error("%s", e)
        print(f"streamfuse run: {e}", file=sys.stderr)
        return 1
