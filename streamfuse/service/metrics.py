"""Serving every process's metrics from the supervisor (prometheus-client multiprocess mode).

The supervisor makes ``<run dir>/metrics`` (emptied at start), sets
``PROMETHEUS_MULTIPROC_DIR`` to it in its own environment *before*
``prometheus_client`` is first imported (the library picks its value store at
import) and in every child's, serves a ``MultiProcessCollector`` on
``metrics.listen``, and calls :func:`mark_dead` when a child exits so its
live-only gauges disappear. Counters of dead children keep counting (that is
how Prometheus multiprocess mode sums restarts).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("streamfuse.metrics")
ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_dir(run_dir: Path) -> Path:
    """Create (or empty) the multiprocess directory and point this process at it."""
    d = run_dir / "metrics"
    if d.exists():
        shutil.rmtree(d)  # old files would add a previous run's counts to this one
    d.mkdir(parents=True)
    os.environ[ENV] = str(d)
    return d


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``"127.0.0.1:9108"`` -> (host, port); ``""`` -> None (metrics off)."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _collector(directory: Path, registry: Any) -> Any:
    """A MultiProcessCollector that skips a file another process is just creating.

    A child that starts creates its ``*.db`` file empty and then maps it; read in
    between, the stock collector raises (``struct.error``): here that file is left
    out of this one scrape instead.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    from streamfuse.metrics import merge_files  # only now: PROMETHEUS_MULTIPROC_DIR is set

    class Tolerant(MultiProcessCollector):  # type: ignore[misc]
        def collect(self) -> Any:
            return merge_files(directory)

    return Tolerant(registry, path=str(directory))


@dataclass
class MetricsServer:
    """The HTTP endpoint; ``port`` is the bound port (useful with port 0)."""

    httpd: Any
    thread: Any
    port: int

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2)


def serve(listen: str, directory: Path) -> MetricsServer | None:
    """Serve the sum of all processes' metrics in ``directory`` on ``listen``."""
    addr = parse_listen(listen)
    if addr is None:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    _collector(directory, registry)
    try:
        httpd, thread = start_http_server(addr[1], addr=addr[0], registry=registry)
    except OSError as e:
        raise RuntimeError(
            f"metrics.listen: cannot listen on {listen}: {e.strerror or e}") from None
    port = httpd.server_address[1]
    log.info("metrics on http://%s:%d/metrics", addr[0], port)
    return MetricsServer(httpd, thread, port)


def mark_dead(pid: int, directory: Path) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))


def model_ids_by_pid(directory: Path) -> dict[int, str]:
    """``streamfuse_model_info`` per live worker pid: which model each one serves.

    A second sign of a loaded model beside the readiness file (a worker that
    sets the gauge has a model).
    """
    from prometheus_client import CollectorRegistry

    out: dict[int, str] = {}
    for metric in _collector(directory, CollectorRegistry()).collect():
        if metric.name != "streamfuse_model_info":
            continue
        for s in metric.samples:
            if s.value >= 1 and "pid" in s.labels:
                out[int(s.labels["pid"])] = s.labels.get("model_id", "")
    return out


def windows_held(pid: int, directory: Path) -> int:
    """The last ``streamfuse_worker_windows_held`` of worker ``pid`` (alive or just dead;
    read before :func:`mark_dead` removes it), 0 when it never set one."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = [str(f) for f in directory.glob(f"gauge_liveall_{pid}.db")]
    if not files:
        return 0
    try:
        families = MultiProcessCollector.merge(files, accumulate=False)
    except (struct.error, OSError, ValueError) as e:
        log.warning("metrics: cannot read the windows worker %d held: %s", pid, e)
        return 0
    return int(sum(s.value for f in families if f.name == "streamfuse_worker_windows_held"
                   for s in f.samples))
