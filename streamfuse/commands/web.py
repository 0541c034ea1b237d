"""``streamfuse web``: serve the console (:mod:`streamfuse.web.server`) on ``web.listen``
until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from streamfuse.config import Config, is_local_listen
from streamfuse.signals import Signals
from streamfuse.web.server import serve, url

log = logging.getLogger("streamfuse.web")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if not cfg.web.listen:
        log.info("web.listen is empty: the console is off")
        return 0
    signals = Signals()
    where = "" if is_local_listen(cfg.web.listen) else " (token required)"
    log.info("web console on %s%s", url(cfg), where)
    try:
        started = asyncio.run(serve(cfg, signals.stop))
    except SystemExit:  # uvicorn exits 1 when it cannot bind web.listen
        started = False
    if not started:
        log.error("web console: cannot listen on %s", cfg.web.listen)
        return 1
    return 0
