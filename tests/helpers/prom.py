"""Metrics read the way a scraper reads them: the Prometheus text format, parsed.

One helper for every test: in-process counters through ``generate_latest(REGISTRY)``
(never a client object's private ``_value``), a daemon's through ``GET /metrics``::

    from tests.helpers import prom

    before = prom.value("streamfuse_model_reloads_total", outcome="failed")
    m = prom.scrape(port)
    prom.total(m, "streamfuse_classifications_total", source="room1")
"""

from __future__ import annotations

import urllib.request

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Every sample of a text exposition, keyed by (sample name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = out.get(key, 0.0) + s.value
    return out


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """Every sample on ``GET http://host:port/metrics``."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        return parse(r.read().decode())


def local() -> Samples:
    """Every sample of this process's default registry, as ``/metrics`` would serve it."""
    return parse(generate_latest(REGISTRY).decode())


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none):
    a label left out, ``pid`` of a multi-process daemon for one, is summed over."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def value(name: str, **labels: str) -> float:
    """``total`` of this process's registry: one sample (or a sum) by name and labels."""
    return total(local(), name, **labels)
