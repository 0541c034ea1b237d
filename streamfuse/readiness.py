"""How a child tells the supervisor it is ready (or why it is not).

The supervisor gives each child ``STREAMFUSE_STATUS_FILE=<run dir>/status/<child>.json``.
A child calls :func:`report` when its state changes; the file is replaced
atomically, so the supervisor never reads half of it. Outside the supervisor
the variable is unset and :func:`report` does nothing.

States the supervisor understands (others are shown in ``STATUS=`` as they are):

- worker: ``report("model", model_id=ID, device=DEV)`` once a model serves;
  ``report("no-model", looked=PATH, device=DEV)`` when none could be loaded (it
  keeps running and waiting for one). Either makes the worker count as ready;
  ``device`` (``cpu``, ``cuda:0``) is shown in ``STATUS=`` ("model ID on cpu").
- any child: ``report("ready")`` when it is up (optional).

This module sits outside ``service/`` so that nodes can import it without
importing the supervisor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "STREAMFUSE_STATUS_FILE"


def report(state: str, **fields: Any) -> None:
    """Write ``{"state": state, "pid": ..., **fields}`` to ``$STREAMFUSE_STATUS_FILE``."""
    path = os.environ.get(ENV)
    if not path:
        return
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), **fields}))
        os.replace(tmp, p)
    except OSError as e:
        # Readiness is advisory: the supervisor falls back on other signs.
        import logging

        logging.getLogger("streamfuse.readiness").warning("cannot write %s: %s", p, e)


def read(path: str | Path) -> dict[str, Any] | None:
    """The last report in ``path``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
