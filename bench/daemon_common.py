"""Shared parts of the daemon benchmarks (end_to_end, scale, soak).

Each bench runs the real daemon (``streamfuse run``) as a child, waits for its
``READY=1`` on a notify socket of its own, and collects classifications from
the bus. Data and model come from the demo's cache (``streamfuse demo``
builds them; a bench builds them the same way if missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamfuse.service import demo  # noqa: E402
from streamfuse.stats import percentile  # noqa: E402
from streamfuse.wire import topics  # noqa: E402


def prepare(segments: int, epochs: int, cache: str | None = None, data: str | None = None) -> tuple[Path, Path]:
    """(avdigits dir, model dir), built or reused from the demo cache."""
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-bench-"))
    cfg = demo.write_config(run_dir, None)
    return demo.prepare(demo.cache_dir(cache), demo.Size(segments, epochs), Path(data) if data else None, cfg)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def class_sub(ctx: zmq.Context, output: str, prefixes: list[bytes] | None = None) -> zmq.Socket:
    """A SUB on the daemon's bus output (linger 0), subscribed to ``prefixes`` (all by default)."""
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    for prefix in [b""] if prefixes is None else prefixes:
        sub.subscribe(prefix)
    sub.connect(output)
    return sub


def start_replay(files: list[str], cfg_path: Path, *extra: str) -> subprocess.Popen:
    """``streamfuse replay FILES --rate 1 EXTRA --config CFG_PATH`` as a child, stderr discarded."""
    return subprocess.Popen([sys.executable, "-m", "streamfuse", "replay", *files, "--rate", "1", *extra,
                             "--config", str(cfg_path)], stderr=subprocess.DEVNULL)


@dataclass
class Collected:
    rows: list[dict] = field(default_factory=list)

    def latency(self) -> dict[str, dict[str, float]]:
        out = {}
        for part in ("total", "align", "queue", "infer"):
            vals = [float(r["latency_ms"].get(part, 0.0)) for r in self.rows]
            if vals:
                out[part] = {"p50": percentile(vals, 50), "p99": percentile(vals, 99), "max": max(vals)}
        own = [float(r["latency_ms"]["total"]) - float(r["latency_ms"].get("infer", 0.0)) for r in self.rows]
        if own:
            out["total-infer"] = {"p50": percentile(own, 50), "p99": percentile(own, 99), "max": max(own)}
        return out

    def lost_windows(self, hop_ns: int) -> tuple[int, int, int]:
        """(windows answered, windows missing between the first and last per source, answered twice)."""
        by_src: dict[str, list[int]] = {}
        for r in self.rows:
            by_src.setdefault(r["source"], []).append(int(r["t_start_ns"]))
        missing = twice = 0
        for starts in by_src.values():
            uniq = sorted(set(starts))
            twice += len(starts) - len(uniq)
            missing += sum((b - a) // hop_ns - 1 for a, b in zip(uniq, uniq[1:], strict=False))
        return len(self.rows), missing, twice


def collect(sub: zmq.Socket, rows: Collected, until_s: float) -> None:
    """Read classifications for ``until_s`` seconds (wall)."""
    end = time.monotonic() + until_s
    while time.monotonic() < end:
        if not sub.poll(100):
            continue
        parts = sub.recv_multipart()
        if topics.is_class_topic(parts[0]) and len(parts) >= 3:
            rows.rows.append(json.loads(parts[2]))


def rss_tree(pid: int) -> dict[str, int]:
    """Resident memory (KiB) of ``pid`` and its children, by STREAMFUSE_CHILD name (or 'supervisor')."""
    out = {"supervisor": _rss(pid)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            name = env.get(b"STREAMFUSE_CHILD", entry.encode()).decode()
            out[name] = _rss(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_tree(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``pid`` ('supervisor', the broker's thread
    included) and of each child, by STREAMFUSE_CHILD name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(entry) != pid and int(fields[1]) != pid:
                continue
            name = "supervisor"
            if int(entry) != pid:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                name = env.get(b"STREAMFUSE_CHILD", entry.encode()).decode()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def lost_by_metrics(text: str) -> tuple[float, float]:
    """(windows the aligner emitted, classifications the workers published), from the daemon's metrics.

    Their difference is what was lost between aligner and bus. (Gaps in a source's
    window sequence are not all losses: a window in which no stream is present is
    not emitted, by design, e.g. at a looped recording's seam.)
    """
    return metric_sum(text, "streamfuse_windows_total"), metric_sum(text, "streamfuse_classifications_total")


def proxy_hop_latency(n: int = 2000, size: int = 1280) -> dict[str, float]:
    """The physical floor in the same run: PUB -> bare zmq.proxy (XSUB/XPUB, own process) -> SUB, ipc.

    Returns p50/p99 in ms of one message's trip, paced at 1 kHz.
    """
    d = Path(tempfile.mkdtemp(prefix="streamfuse-proxy-"))
    code = ("import zmq,sys;c=zmq.Context();a=c.socket(zmq.XSUB);b=c.socket(zmq.XPUB);"
            f"a.bind('ipc://{d}/in');b.bind('ipc://{d}/out');zmq.proxy(a,b)")
    proxy = subprocess.Popen([sys.executable, "-c", code])
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    try:
        while not (d / "out").exists():
            time.sleep(0.01)
        sub.subscribe(b"")
        sub.connect(f"ipc://{d}/out")
        pub.connect(f"ipc://{d}/in")
        payload = b"x" * size
        while True:  # slow joiner: until one message gets through
            pub.send_multipart([b"t", payload])
            if sub.poll(50):
                sub.recv_multipart()
                break
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            pub.send_multipart([b"t", payload])
            sub.recv_multipart()
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            time.sleep(0.001)
        return {"p50": percentile(lat, 50), "p99": percentile(lat, 99)}
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()
        proxy.kill()
        proxy.wait()


def fmt(lat: dict[str, dict[str, float]]) -> str:
    return "\n".join(f"  {k:<12} p50 {v['p50']:8.2f} ms   p99 {v['p99']:8.2f} ms   max {v['max']:8.2f} ms"
                     for k, v in lat.items())


