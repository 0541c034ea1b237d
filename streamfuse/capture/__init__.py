"""Capture processes: one per stream, publishing to ``bus.input`` (docs/architecture.md).

``streamfuse capture video|audio|text --source NAME`` runs :func:`main`, which
picks the source's stream config and starts the matching node:
:mod:`~streamfuse.capture.camera`, :mod:`~streamfuse.capture.microphone` or
:mod:`~streamfuse.capture.text`. SIGTERM/SIGINT stop it (exit 0). Nothing here
imports torch, so an edge host needs only the light dependencies.
"""

from __future__ import annotations

import importlib
import threading

from streamfuse.clock import NS_PER_MS
from streamfuse.config import Config, ConfigError
from streamfuse.frameplane.writer import hold_ms

MODULES = {"video": "streamfuse.capture.camera", "audio": "streamfuse.capture.microphone",
           "text": "streamfuse.capture.text"}


def main(cfg: Config, stream: str, source: str, *, stop: threading.Event) -> int:
    """Capture ``stream`` (video, audio or text) of ``source`` until ``stop`` is set."""
    src = cfg.source(source)
    stream_cfg = getattr(src, stream)
    if stream_cfg is None:
        have = ", ".join(src.streams()) or "none"
        raise ConfigError(f"sources.{stream}: source {src.name!r} has no "
                          f"[sources.{stream}] table (it has: {have})")
    module = importlib.import_module(MODULES[stream])
    # The aligner's window grid: captures send a heartbeat just after each window end.
    grid = (cfg.align.window_ms * NS_PER_MS, cfg.align.hop_ms * NS_PER_MS)
    # Video frames in the frame plane stay readable until every window showing them is answered.
    extra = {"hold_ms": hold_ms(cfg.align)} if stream == "video" else {}
    return int(module.main(src.name, stream_cfg, cfg.bus, stop, grid=grid, **extra))
