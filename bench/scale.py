"""How many sources one daemon sustains: VGA 15 fps raw video + audio + text each.

    .venv/bin/python bench/scale.py [--steps 1 2 3 4] [--seconds 15] [--planes shm inline] [--json F]

Each step runs once per ``--planes`` mode (``bus.frame_plane``), alternated in that order,
and reports the CPU share of each process role (the supervisor holds the broker; the
feeders stand for the captures) over the fed seconds, in % of one core.

For N = each step: a fresh ``streamfuse run`` with N named sources (captured
"elsewhere": synthetic publishers, bench/feed_source.py, one process each,
stamping frames with the current time), one worker with the demo model.
A step passes with no loss (no window missing between a source's first and
last classification, no sequence gap or drop counted by the daemon) and p99
``latency_ms.total`` < 100 ms. Stops at the first step with loss. Reference in
the same run: the bare-proxy hop (bench/daemon_common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import zmq
from daemon_common import (
    Collected,
    class_sub,
    collect,
    cpu_tree,
    demo,
    free_port,
    lost_by_metrics,
    metric_sum,
    prepare,
    proxy_hop_latency,
    scrape,
)

from streamfuse.wire import topics

HERE = Path(__file__).resolve().parent


def _share(before: dict[str, float], after: dict[str, float], fed: list[dict],
           wall_s: float) -> dict[str, float]:
    """% of one core by role over ``wall_s``: supervisor (broker), aligner, workers, feeders."""
    role = {"supervisor": "broker+supervisor", "aligner": "aligner"}
    out: dict[str, float] = {}
    for name, cpu in after.items():
        r = role.get(name, name)
        out[r] = out.get(r, 0.0) + (cpu - before.get(name, 0.0))
    out["feeders (captures)"] = sum(f.get("cpu_s", 0.0) for f in fed)
    return {k: round(100 * v / wall_s, 1) for k, v in out.items()}


def _feed(cfg_path: Path, n: int, seconds: float, sub: zmq.Socket, rows: Collected,
          pid: int) -> tuple[list[dict], dict[str, float]]:
    """Run the ``n`` feeders, collecting classifications: their reports and the CPU share
    by role over the fed seconds."""
    from streamfuse import clock

    cpu0, t0 = cpu_tree(pid), clock.monotonic_ns()
    feeders = [subprocess.Popen([sys.executable, str(HERE / "feed_source.py"), str(cfg_path), f"s{i}",
                                 str(seconds)], stdout=subprocess.PIPE, text=True) for i in range(n)]
    cpu1, wall_s = cpu0, 0.0
    while any(f.poll() is None for f in feeders):
        collect(sub, rows, 0.5)
        if not wall_s and clock.monotonic_ns() - t0 >= (seconds + 1) * 1e9:
            cpu1, wall_s = cpu_tree(pid), (clock.monotonic_ns() - t0) / 1e9
    collect(sub, rows, 2.5)
    fed = [json.loads(f.stdout.read().strip().splitlines()[-1]) for f in feeders]
    return fed, (_share(cpu0, cpu1, fed, wall_s) if wall_s else {})


def step(n: int, seconds: float, model: Path, plane: str) -> dict:
    from streamfuse.config import load
    from streamfuse.signals import Signals

    os.environ["STREAMFUSE_BUS_FRAME_PLANE"] = plane  # the daemon and the feeders read it

    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-scale-"))
    port = free_port()
    try:
        cfg_path = demo.write_config(run_dir, model, metrics=f"127.0.0.1:{port}")
        with open(cfg_path, "a") as f:
            for i in range(n):
                f.write(f'\n[[sources]]\nname = "s{i}"\n')
        cfg = load(cfg_path, environ={})
        daemon = demo.Daemon(cfg_path, run_dir)
        rows = Collected()
        try:
            daemon.wait_ready(120, Signals())
            with zmq.Context() as ctx:
                sub = class_sub(ctx, cfg.bus.output, [topics.class_topic(f"s{i}").encode() for i in range(n)])
                fed, share = _feed(cfg_path, n, seconds, sub, rows, daemon.proc.pid)
                sub.close()
            text = scrape(port)
        finally:
            daemon.stop()
        # Windows ending after the feeders stopped can only close on max_lateness (no later
        # data comes): by design, and not what a sustained stream sees, so they are left out.
        feed_end = min(f["end_ns"] for f in fed)
        tail = [r for r in rows.rows if r["t_end_ns"] > feed_end]
        rows.rows = [r for r in rows.rows if r["t_end_ns"] <= feed_end]
        lat = rows.latency()
        rows.rows += tail
        answered, missing, twice = rows.lost_windows(cfg.align.hop_ms * 1_000_000)
        emitted, published = lost_by_metrics(text)
        missing = max(missing, int(emitted - published))  # every source is fed without pause: gaps are losses
        expected = n * int(seconds * 1000 / cfg.align.hop_ms)
        gaps = metric_sum(text, "streamfuse_seq_gap_messages_total")
        dropped = metric_sum(text, "streamfuse_messages_dropped_total")
        p99 = lat.get("total", {}).get("p99", float("inf"))
        ok = answered > 0 and missing == 0 and gaps == 0 and dropped == 0 and p99 < 100 and answered >= 0.9 * expected
        present = {m: sum(bool(r["present"].get(m)) for r in rows.rows) / max(1, len(rows.rows))
                   for m in ("video", "audio")}
        return {"sources": n, "frame_plane": plane, "ok": ok, "cpu_pct": share, "present": present, "classifications": answered, "expected_about": expected,
                "missing": missing, "twice": twice, "seq_gaps": gaps, "dropped": dropped, "latency_ms": lat,
                "feeder_worst_lag_ms": max(f["worst_lag_ms"] for f in fed)}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _report(r: dict) -> None:
    t = r["latency_ms"].get("total", {})
    print(f"scale: {r['sources']} source(s) {r['frame_plane']}: {'OK' if r['ok'] else 'FAIL'}  "
          f"{r['classifications']}/{r['expected_about']} windows, missing {r['missing']}, "
          f"seq gaps {r['seq_gaps']:.0f}, dropped {r['dropped']:.0f}, "
          f"total p50 {t.get('p50', float('nan')):.1f} p99 {t.get('p99', float('nan')):.1f} ms, "
          f"feeder lag {r['feeder_worst_lag_ms']:.0f} ms, video/audio present in "
          f"{r['present']['video']:.0%}/{r['present']['audio']:.0%} of windows", flush=True)
    parts = " ".join(f"{k} {v.get('p50', float('nan')):.1f}/{v.get('p99', float('nan')):.1f}"
                     for k, v in r["latency_ms"].items() if k != "total")
    print(f"         p50/p99 ms by part: {parts}", flush=True)
    print(f"         CPU % of one core: {r['cpu_pct']}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--cache", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--planes", nargs="+", default=["shm", "inline"], choices=["shm", "inline"])
    args = p.parse_args()
    _, mdir = prepare(demo.SMALL.segments, demo.SMALL.epochs, args.cache)
    proxy = proxy_hop_latency(n=1000)
    results = []
    stopped: set[str] = set()
    for n in args.steps:
        for plane in args.planes:
            if plane in stopped:
                continue
            r = step(n, args.seconds, mdir, plane)
            results.append(r)
            _report(r)
            if r["missing"] or r["seq_gaps"] or r["dropped"]:
                stopped.add(plane)  # loss: more sources only lose more
        if stopped == set(args.planes):
            break
    for plane in args.planes:
        best = max([r["sources"] for r in results if r["ok"] and r["frame_plane"] == plane], default=0)
        print(f"scale: frame_plane={plane}: sustained {best} source(s) of VGA 15 fps + audio + text "
              f"(reference: bare proxy hop p50 {proxy['p50']:.3f} ms p99 {proxy['p99']:.3f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": results, "proxy_hop_ms": proxy}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
