"""Soak: the daemon at 1x for N minutes; resident memory of every process and lost windows.

    .venv/bin/python bench/soak.py [--minutes 30] [--json F]

``streamfuse run`` with the demo model; ``streamfuse replay --loop --restamp``
of the avdigits test split at 1x as its input for the whole time. Every
``--sample-s`` seconds the RSS of the supervisor and each child is read from
/proc. Reported per process: RSS after warm-up (the first sample after
``max(60 s, 20 %)`` of the run), at the end, and the growth (goal < 5 %); and
windows lost (missing between consecutive classifications of a source) or
answered twice (goal 0), child restarts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq
from daemon_common import (
    Collected,
    class_sub,
    collect,
    demo,
    free_port,
    lost_by_metrics,
    metric_sum,
    prepare,
    rss_tree,
    scrape,
    start_replay,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--sample-s", type=float, default=15.0)
    p.add_argument("--cache", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from streamfuse.config import load
    from streamfuse.signals import Signals

    ddir, mdir = prepare(demo.SMALL.segments, demo.SMALL.epochs, args.cache)
    files = sorted(str(f) for f in (ddir / "test").glob("*.mcap"))
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-soak-"))
    port = free_port()
    rows = Collected()
    samples: list[tuple[float, dict[str, int]]] = []
    try:
        cfg_path = demo.write_config(run_dir, mdir, metrics=f"127.0.0.1:{port}")
        cfg = load(cfg_path, environ={})
        daemon = demo.Daemon(cfg_path, run_dir)
        try:
            daemon.wait_ready(120, Signals())
            with zmq.Context() as ctx:
                sub = class_sub(ctx, cfg.bus.output)
                replay = start_replay(files, cfg_path, "--loop", "--restamp")
                t0 = time.monotonic()
                end = t0 + args.minutes * 60
                while time.monotonic() < end and replay.poll() is None and daemon.proc.poll() is None:
                    samples.append((time.monotonic() - t0, rss_tree(daemon.proc.pid)))
                    collect(sub, rows, min(args.sample_s, max(0.0, end - time.monotonic())))
                replay.terminate()
                try:
                    replay.wait(10)
                except subprocess.TimeoutExpired:
                    print("soak: replay ignored SIGTERM for 10 s; killed", file=sys.stderr)
                    replay.kill()
                    replay.wait(5)
                collect(sub, rows, 3.0)
                sub.close()
            text = scrape(port)
        finally:
            daemon.stop()
        elapsed = samples[-1][0] if samples else 0.0
        warm_t = max(60.0, 0.2 * elapsed)
        warm = next((s for t, s in samples if t >= warm_t), samples[-1][1] if samples else {})
        last = samples[-1][1] if samples else {}
        growth = {k: {"warm_kib": warm.get(k, 0), "end_kib": v,
                      "growth_pct": 100.0 * (v - warm[k]) / warm[k] if warm.get(k) else float("nan")}
                  for k, v in last.items()}
        n, gaps, twice = rows.lost_windows(cfg.align.hop_ms * 1_000_000)
        emitted, answered = lost_by_metrics(text)
        restarts = metric_sum(text, "streamfuse_child_restarts_total")
        print(f"soak: {elapsed / 60:.1f} min at 1x, {n} classifications received; aligner emitted {emitted:.0f}, "
              f"workers answered {answered:.0f}: {emitted - answered:.0f} windows lost, {twice} answered twice; "
              f"{gaps} gaps in the window sequence (windows with nothing present are not emitted, e.g. at the "
              f"loop seam); {restarts:.0f} child restarts")
        for k, g in sorted(growth.items()):
            print(f"  {k:<22} RSS after warm-up {g['warm_kib'] / 1024:7.1f} MiB   end {g['end_kib'] / 1024:7.1f} MiB"
                  f"   growth {g['growth_pct']:+.1f} %")
        if args.json:
            Path(args.json).write_text(json.dumps({"minutes": elapsed / 60, "classifications": n,
                                                   "emitted": emitted, "answered": answered, "gaps": gaps, "twice": twice, "restarts": restarts,
                                                   "rss": growth, "samples": samples}, indent=2))
        return 0 if n else 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
