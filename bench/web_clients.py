"""What browsers on the web console cost the pipeline: 0 vs N live clients, same run.

    .venv/bin/python bench/web_clients.py [--clients 3] [--phase-s 15] [--restamp] [--json F]

Starts ``streamfuse run`` with its web console (one worker with the demo model, as
bench/end_to_end.py), replays the avdigits test split at 1x in a loop, and alternates
phases with 0 and ``--clients`` WebSocket clients connected (0, N, 0, N: the order is
rotated so drift does not favour one; ``--restamp`` re-stamps the replay to now). Each
client speaks the page's live protocol (streamfuse/web/live.py): it reads every message and
acknowledges it, as the browser does.
Reported per client count: p50/p99 of ``latency_ms.total`` of the classifications that
arrived in those phases, the web process's CPU (from /proc, user + system), and what the
clients received (frames/s each, KB/s each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq
from daemon_common import class_sub, demo, prepare, start_replay

from streamfuse.stats import percentile

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Clients:
    """``n`` live-protocol clients on their own thread and event loop, until ``close()``."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.frames = 0
        self.bytes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _one(self) -> None:
        import websockets

        async with websockets.connect(self.url, max_size=None) as ws:
            while not self.stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                self.bytes += len(msg)
                if isinstance(msg, bytes):
                    self.frames += 1
                await ws.send("a")

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.n)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def collect_for(sub: zmq.Socket, seconds: float, rows: list[dict]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sub.poll(100):
            parts = sub.recv_multipart()
            if parts[0].endswith(b"/class") and len(parts) >= 3:
                rows.append(json.loads(parts[2]))


def run_phases(args: argparse.Namespace, cfg_path: Path, run_dir: Path, files: list[str]) -> dict:
    from streamfuse.config import load
    from streamfuse.signals import Signals

    daemon = demo.Daemon(cfg_path, run_dir)
    results: dict[int, dict] = {n: {"rows": [], "cpu": 0.0, "s": 0.0, "frames": 0, "bytes": 0}
                                for n in (0, args.clients)}
    try:
        daemon.wait_ready(120, Signals())
        cfg = load(cfg_path, environ={})
        children = json.loads((run_dir / "children.json").read_text())["children"]
        web_pid = next(c["pid"] for c in children if c["name"] == "web")
        ws_url = f"ws://{cfg.web.listen}/ws"
        restamp = ["--restamp"] if args.restamp else []
        replay = start_replay(files, cfg_path, "--loop", *restamp)
        with zmq.Context() as ctx:
            sub = class_sub(ctx, cfg.bus.output)
            collect_for(sub, 5.0, [])  # warm-up: the first windows of a replay
            for n in (0, args.clients, 0, args.clients):
                clients = Clients(ws_url, n) if n else None
                time.sleep(1.0 if n else 0.0)  # connected and streaming before the phase counts
                c0, t0 = cpu_s(web_pid), time.monotonic()
                f0, b0 = (clients.frames, clients.bytes) if clients else (0, 0)
                collect_for(sub, args.phase_s, results[n]["rows"])
                r = results[n]
                r["cpu"] += cpu_s(web_pid) - c0
                r["s"] += time.monotonic() - t0
                if clients:
                    r["frames"] += clients.frames - f0
                    r["bytes"] += clients.bytes - b0
                    clients.close()
            sub.close()
        replay.terminate()
        replay.wait(10)
    finally:
        daemon.stop()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--phase-s", type=float, default=15.0)
    p.add_argument("--restamp", action="store_true", help="replay --restamp (times shifted to now)")
    p.add_argument("--segments", type=int, default=demo.SMALL.segments)
    p.add_argument("--epochs", type=int, default=demo.SMALL.epochs)
    p.add_argument("--cache", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ddir, mdir = prepare(args.segments, args.epochs, args.cache)
    files = sorted(str(f) for f in (ddir / "test").glob("*.mcap"))
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-webbench-"))
    try:
        cfg_path = demo.write_config(run_dir, mdir, web=demo.web_listen(0))
        results = run_phases(args, cfg_path, run_dir, files)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    out = {}
    for n, r in results.items():
        lat = [float(c["latency_ms"]["total"]) for c in r["rows"]]
        out[n] = {"classifications": len(lat), "latency_total_p50_ms": percentile(lat, 50),
                  "latency_total_p99_ms": percentile(lat, 99), "web_cpu_percent": 100 * r["cpu"] / r["s"],
                  "frames_per_s_per_client": r["frames"] / r["s"] / n if n else 0.0,
                  "kb_per_s_per_client": r["bytes"] / 1e3 / r["s"] / n if n else 0.0}
        o = out[n]
        print(f"web_clients: {n} client(s): {o['classifications']} classifications, "
              f"latency_ms.total p50 {o['latency_total_p50_ms']:.2f} "
              f"p99 {o['latency_total_p99_ms']:.2f}; "
              f"web process CPU {o['web_cpu_percent']:.1f} %; per client "
              f"{o['frames_per_s_per_client']:.1f} frames/s, {o['kb_per_s_per_client']:.0f} KB/s")
    extra = (out[args.clients]["web_cpu_percent"] - out[0]["web_cpu_percent"]) / args.clients
    print(f"web_clients: web process CPU per connected client: {extra:.1f} % of one core")
    if args.json:
        Path(args.json).write_text(json.dumps({"by_clients": out, "cpu_percent_per_client": extra},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
