"""What the long-running node commands (align, fuse) do before the node's ``main``."""

from __future__ import annotations

import logging
import os

from streamfuse import metrics
from streamfuse.config import Config


def serve_metrics(cfg: Config, log: logging.Logger) -> None:
    """Serve this process's metrics on ``metrics.listen`` when it runs alone (a child of
    ``streamfuse run`` has them served by the supervisor: ``PROMETHEUS_MULTIPROC_DIR``)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and cfg.metrics.listen:
        try:
            metrics.serve(cfg.metrics.listen)
        except OSError as e:
            log.warning("metrics not served on %s: %s", cfg.metrics.listen, e)
