"""End-to-end latency through the real daemon: replay an avdigits recording at 1x.

    .venv/bin/python bench/end_to_end.py [--segments 60] [--cache DIR] [--json F]

Starts ``streamfuse run`` (no local captures; one worker with the demo model),
replays the avdigits test split at 1x with ``streamfuse replay`` and reports
p50/p99 of ``latency_ms.total`` and its parts from every classification, plus
``total - infer`` (the pipeline's own share; goal p99 < 10 ms on 2 cores).
Reference in the same run: one message's trip through a bare ``zmq.proxy``
(PUB -> XSUB/XPUB process -> SUB over ipc), the floor of any brokered hop.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import zmq
from daemon_common import (
    Collected,
    class_sub,
    collect,
    demo,
    fmt,
    free_port,
    lost_by_metrics,
    prepare,
    proxy_hop_latency,
    scrape,
    start_replay,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=demo.SMALL.segments)
    p.add_argument("--epochs", type=int, default=demo.SMALL.epochs)
    p.add_argument("--cache", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ddir, mdir = prepare(args.segments, args.epochs, args.cache, args.data)
    files = sorted(str(f) for f in (ddir / "test").glob("*.mcap"))
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-e2e-"))
    rows = Collected()
    try:
        port = free_port()
        cfg_path = demo.write_config(run_dir, mdir, metrics=f"127.0.0.1:{port}")
        daemon = demo.Daemon(cfg_path, run_dir)
        try:
            from streamfuse.config import load
            from streamfuse.signals import Signals

            daemon.wait_ready(120, Signals())
            cfg = load(cfg_path, environ={})
            with zmq.Context() as ctx:
                sub = class_sub(ctx, cfg.bus.output)
                replay = start_replay(files, cfg_path)
                while replay.poll() is None:
                    collect(sub, rows, 0.5)
                collect(sub, rows, 3.0)  # the last windows close after the final heartbeats
                sub.close()
            emitted, answered = lost_by_metrics(scrape(port))
        finally:
            daemon.stop()
        proxy = proxy_hop_latency()
        lat = rows.latency()
        n, _gaps, twice = rows.lost_windows(500_000_000)
        missing = emitted - answered
        print(f"end_to_end: {n} classifications from {len(files)} recording(s) at 1x; aligner emitted "
              f"{emitted:.0f}, workers answered {answered:.0f}; {twice} answered twice")
        print(fmt(lat))
        print(f"  reference: bare zmq.proxy hop (1.3 KB, ipc)  p50 {proxy['p50']:.3f} ms  p99 {proxy['p99']:.3f} ms")
        if args.json:
            Path(args.json).write_text(json.dumps({"latency_ms": lat, "classifications": n, "missing": missing,
                                                   "twice": twice, "proxy_hop_ms": proxy}, indent=2))
        return 0 if n else 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
