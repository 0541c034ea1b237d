"""The health page's numbers: the same ones ``/metrics`` serves, read where they are kept.

Under ``streamfuse run`` every child writes its metrics into the run directory
(prometheus-client multiprocess files, ``$PROMETHEUS_MULTIPROC_DIR``), its readiness
into ``status/<child>.json``, and the supervisor writes ``children.json`` (state, pid,
restarts, last exit of each child) once a second. This module merges the metric files
the way the supervisor's ``/metrics`` does and turns counters into rates by
differencing two reads. Standalone (``streamfuse web`` without the supervisor) there
is no run directory and the page says so.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamfuse import readiness
from streamfuse.clock import NS_PER_S as NS

Samples = dict[str, list[tuple[dict[str, str], float]]]


def collect(directory: Path) -> Samples:
    """Every sample of every metric file in ``directory``, summed across processes.

    A file another process is just creating cannot be read yet: it is left out of this read.
    """
    from streamfuse.metrics import merge_files

    out: Samples = defaultdict(list)
    for fam in merge_files(directory):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out


def total(samples: Samples, name: str, by: str, **match: str) -> dict[str, float]:
    """Sum of ``name`` grouped by the label ``by`` over samples whose labels match."""
    out: dict[str, float] = defaultdict(float)
    for labels, v in samples.get(name, []):
        if all(labels.get(k) == val for k, val in match.items()):
            out[labels.get(by, "")] += v
    return dict(out)


def quantiles(samples: Samples, name: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99), *,
              interpolate: bool = True, scale: float = 1.0, **match: str) -> dict[str, Any]:
    """Quantiles of a histogram, interpolated in its buckets (as PromQL's histogram_quantile);
    with ``interpolate=False`` the upper bound of the bucket holding each quantile (for
    integer-valued histograms such as batch sizes, where interpolation invents fractions).
    The mean and quantiles are multiplied by ``scale`` (1000: a seconds histogram in ms)."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, v in samples.get(f"{name}_bucket", []):
        if all(labels.get(k) == val for k, val in match.items()):
            buckets[float(labels["le"]) * scale] += v
    count = sum(v for lb, v in samples.get(f"{name}_count", [])
                if all(lb.get(k) == val for k, val in match.items()))
    tot = sum(v for lb, v in samples.get(f"{name}_sum", [])
              if all(lb.get(k) == val for k, val in match.items()))
    out: dict[str, Any] = {"count": int(count),
                           "mean": round(scale * tot / count, 3) if count else None}
    edges = sorted(buckets.items())
    for q in qs:
        out[f"p{round(q * 100)}"] = _quantile(edges, q, interpolate) if count else None
    return out


def _quantile(edges: list[tuple[float, float]], q: float, interpolate: bool) -> float | None:
    if not edges or edges[-1][1] <= 0:
        return None
    rank = q * edges[-1][1]
    lo_edge, lo_count = 0.0, 0.0
    for le, cum in edges:
        if cum >= rank:
            if math.isinf(le):
                return round(lo_edge, 3)  # beyond the last finite bucket: its bound
            if not interpolate:
                return le
            width = cum - lo_count
            frac = (rank - lo_count) / width if width > 0 else 1.0
            return round(lo_edge + (le - lo_edge) * frac, 3)
        lo_edge, lo_count = le, cum
    return None


@dataclass
class HealthReader:
    """Reads the run directory; remembers the previous read to turn counters into rates."""

    run_dir: Path | None
    metrics_dir: Path | None
    _prev: tuple[int, tuple[dict[str, float], ...]] | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls) -> HealthReader:
        """Where the supervisor put this child's status file and metrics, if it did."""
        status = os.environ.get(readiness.ENV)
        mdir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return cls(Path(status).parent.parent if status else None, Path(mdir) if mdir else None)

    def read(self, now_ns: int) -> dict[str, Any]:
        out: dict[str, Any] = {"supervised": self.run_dir is not None, "children": [],
                               "streams": []}
        if self.run_dir is not None:
            out.update(self._children())
        if self.metrics_dir is not None and self.metrics_dir.is_dir():
            out.update(self._metrics(collect(self.metrics_dir), now_ns))
        return out

    def _children(self) -> dict[str, Any]:
        assert self.run_dir is not None
        try:
            data = json.loads((self.run_dir / "children.json").read_text())
        except (OSError, ValueError):
            return {"children": []}
        rows = data.get("children", []) if isinstance(data, dict) else []
        for row in rows:
            rep = readiness.read(self.run_dir / "status" / f"{row.get('name')}.json") or {}
            row["reported"] = rep.get("state", "")
            if rep.get("device"):
                row["device"] = rep["device"]
        devices = sorted({r["device"] for r in rows if r.get("device")})
        return {"children": rows, "devices": devices, "model_state": data.get("model", "")}

    def _metrics(self, s: Samples, now_ns: int) -> dict[str, Any]:
        msgs = total(s, "streamfuse_messages_in_total", "topic", node="align")
        classes = total(s, "streamfuse_classifications_total", "source")
        rates_in = self._rates(now_ns, msgs, classes)
        dropped = total(s, "streamfuse_messages_dropped_total", "topic")
        gaps = total(s, "streamfuse_seq_gap_messages_total", "topic", node="align")
        late = _by_topic(s, "streamfuse_late_total")
        absent = _by_topic(s, "streamfuse_windows_absent_total")
        names = sorted(t for t in set(msgs) | set(late) | set(absent) | set(dropped) if "/" in t)
        streams = [{"topic": t, "rate_hz": rates_in[0].get(t), "messages": int(msgs.get(t, 0)),
                    "dropped": int(dropped.get(t, 0)), "seq_gaps": int(gaps.get(t, 0)),
                    "late": int(late.get(t, 0)), "absent_windows": int(absent.get(t, 0))}
                   for t in names]
        restarts = total(s, "streamfuse_child_restarts_total", "child")
        web_dropped = total(s, "streamfuse_web_dropped_total", "kind")
        models = [lb.get("model_id", "") for lb, v in s.get("streamfuse_model_info", []) if v >= 1]
        return {
            "streams": streams,
            "classifications": [{"source": k, "total": int(v), "rate_hz": rates_in[1].get(k)}
                                for k, v in sorted(classes.items())],
            "models": sorted(set(models)),
            "batch_size": quantiles(s, "streamfuse_batch_size", interpolate=False),
            # The histograms are in seconds (the Prometheus base unit); the page shows ms.
            "inference_ms": quantiles(s, "streamfuse_inference_seconds", scale=1000.0),
            "latency_ms": {p: quantiles(s, "streamfuse_window_latency_seconds", scale=1000.0,
                                        part=p)
                           for p in ("total", "align", "queue", "infer")},
            "restarts": {k: int(v) for k, v in restarts.items()},
            "web": {"dropped": {k: int(v) for k, v in web_dropped.items()},
                    "clients": int(sum(v for _, v in s.get("streamfuse_web_clients", [])))},
        }

    def _rates(self, now_ns: int, *counters: dict[str, float]) -> list[dict[str, float]]:
        prev = self._prev
        self._prev = (now_ns, counters)
        if prev is None or now_ns <= prev[0]:
            return [{} for _ in counters]
        dt = (now_ns - prev[0]) / NS
        return [{k: round(max(0.0, v - old.get(k, 0.0)) / dt, 2) for k, v in new.items()}
                for new, old in zip(counters, prev[1], strict=True)]


def _by_topic(s: Samples, name: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, v in s.get(name, []):
        out[f"{labels.get('source', '')}/{labels.get('stream', '')}"] += v
    return dict(out)
