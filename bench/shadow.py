"""What a shadow model costs the live one: the same worker with and without a shadow, one run.

    .venv/bin/python bench/shadow.py [--rate 20] [--batch 32] [--seconds 10] [--rounds 3] [--json OUT]

Two ``streamfuse fuse`` processes (one with ``fusion.shadow``, one without) behind one
``streamfuse broker``, both up for the whole run; rounds alternate which is measured
first, medians are reported. The model is the trainer's default architecture with
random weights (bench/infer.py); the shadow is the same architecture with other
weights, so it costs what the live model costs. Two loads:

- ``paced``: ``--rate`` windows/s, each PUSHed on its own (``max_batch`` 1), like
  ``--rate / 2`` sources at the default 500 ms hop (bench/scale.py's load): the live
  model's ``latency_ms.total`` p50/p99 (the window "ends" when it is sent, so total is
  queue + infer), and the shadow's own ``latency_ms.infer`` p99 from its answers;
- ``saturated``: as many windows as the worker takes (``max_batch`` ``--batch``, 3
  batches in flight): classifications/s and worker CPU ms per window.

The contract checked: with a shadow the live p99 rises by no more than the shadow's
own inference p99.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.infer import (  # noqa: E402
    ALIGN,
    _config,
    _cpu_s,
    _spawn,
    _stop,
    build_model,
    make_windows,
)
from streamfuse import clock  # noqa: E402
from streamfuse.fusion.artifact import save_artifact  # noqa: E402
from streamfuse.stats import percentile  # noqa: E402
from streamfuse.wire import codec  # noqa: E402
from streamfuse.wire.schema import Window  # noqa: E402


class Leg:
    """A running worker (``name``: its config and endpoints) fed by a PUSH, read by a SUB."""

    def __init__(
        self, root: Path, name: str, batch: int, windows: list[Window], shadow: Path | None
    ) -> None:
        self.name, self.batch, self.windows = name, batch, windows
        base = _config(root, root / "model", batch, 1, 5.0)
        text = base.read_text().replace(f"windows-{batch}", f"windows-{name}")
        text = text.replace("[fusion]\n", f'[fusion]\nshadow = "{shadow or ""}"\n')
        cfg = root / f"{name}.toml"
        cfg.write_text(text)
        self.log = root / f"{name}.log"
        self.proc = _spawn(["fuse", "--config", str(cfg)], self.log)
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.bind(f"ipc://{root}/run/windows-{name}")
        # "<name>-" with names that are no prefix of one another: each leg sees only its own.
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = 100000
        for prefix in ("class/", "shadow/"):
            self.sub.setsockopt(zmq.SUBSCRIBE, f"{prefix}{name}-".encode())
        self.sub.connect(f"ipc://{root}/run/out")
        self.seq = 0

    def send(self, tag: str) -> None:
        w = self.windows[self.seq % len(self.windows)]
        now = clock.now_ns()
        length = w.t_end_ns - w.t_start_ns
        t0 = now - length + self.seq  # the window ends now; + seq keeps every key distinct
        self.seq += 1
        w2 = Window(
            source=f"{self.name}-{tag}",
            seq=self.seq,
            t_start_ns=t0,
            t_end_ns=t0 + length,
            present=w.present,
            frames=w.frames,
            frame_encoding=w.frame_encoding,
            frame_t_ns=w.frame_t_ns,
            audio=w.audio,
            samplerate=w.samplerate,
            audio_coverage=1.0,
            texts=w.texts,
            text_t_ns=w.text_t_ns,
            close_ns=t0 + length,
            emit_ns=now,
        )
        self.push.send_multipart(codec.encode_window(w2), copy=False)

    def recv(self, timeout_ms: int) -> list[tuple[str, dict]]:
        out = []
        while self.sub.poll(timeout_ms if not out else 0):
            m = codec.decode(self.sub.recv_multipart())
            out.append((m.topic.partition("/")[0], json.loads(m.text())))
        return out

    def warm_up(self) -> None:
        deadline = time.monotonic() + 180
        while not any(t == "class" for t, _ in self.recv(500)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not answer: {self.log.read_text()[-2000:]}")
            self.send("warm")
        while self.recv(500):
            pass

    def close(self) -> None:
        _stop(self.proc)
        self.push.close()
        self.sub.close()
        self.ctx.term()


def paced(leg: Leg, rate: float, seconds: float) -> dict:
    """``rate`` windows/s for ``seconds``; live total and shadow infer latencies."""
    total: list[float] = []
    shadow_infer: list[float] = []
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        while time.perf_counter() < t0 + i / rate:
            for topic, body in leg.recv(1):
                (total if topic == "class" else shadow_infer).append(
                    body["latency_ms"]["total" if topic == "class" else "infer"]
                )
        leg.send("room1")
    deadline = time.perf_counter() + 20
    while len(total) < n and time.perf_counter() < deadline:
        for topic, body in leg.recv(200):
            (total if topic == "class" else shadow_infer).append(
                body["latency_ms"]["total" if topic == "class" else "infer"]
            )
    return {
        "answered": len(total),
        "sent": n,
        "total_p50_ms": percentile(total, 50),
        "total_p99_ms": percentile(total, 99),
        "shadow_infer_p99_ms": percentile(shadow_infer, 99) if shadow_infer else 0.0,
    }


def saturated(leg: Leg, seconds: float) -> dict:
    cap, sent, received = 3 * leg.batch, 0, 0
    cpu0, t_start = _cpu_s(leg.proc.pid), time.perf_counter()
    t_last = t_start
    while True:
        sending = time.perf_counter() - t_start < seconds
        while sending and sent - received < cap:
            leg.send("room1")
            sent += 1
        if not sending and received >= sent:
            break
        got = [b for t, b in leg.recv(1000) if t == "class"]
        if got:
            received += len(got)
            t_last = time.perf_counter()
        elif time.perf_counter() - t_last > 30:
            raise RuntimeError(f"{leg.name} stalled: sent {sent}, received {received}")
    cpu = _cpu_s(leg.proc.pid) - cpu0
    return {
        "windows_per_s": received / (t_last - t_start),
        "cpu_ms_per_window": cpu / received * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20.0, help="windows/s of the paced load")
    ap.add_argument("--batch", type=int, default=32, help="max_batch of the saturated load")
    ap.add_argument(
        "--seconds", type=float, default=10.0, help="duration of each leg in each round"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; medians are reported"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, prep, align = build_model(None)
    ALIGN.update(align)
    windows = make_windows(
        64, frames_per_window=prep.frames_per_window, window_ms=align["window_ms"]
    )
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="sf-shadow-") as tmp:
        root = Path(tmp)
        save_artifact(root / "model", model, prep, align=ALIGN)
        other, _, _ = build_model(None)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.01 * torch.randn_like(p))
        save_artifact(root / "shadow", other, prep, align=ALIGN)
        broker = _spawn(
            ["broker", "--config", str(_config(root, root / "model", 1, 1, 5))], root / "broker.log"
        )
        legs: list[Leg] = []
        try:
            for load, bs in (("paced", 1), ("saturated", args.batch)):
                for s in (None, root / "shadow"):
                    legs.append(Leg(root, f"{load}-{'shadow' if s else 'alone'}", bs, windows, s))
            for leg in legs:
                leg.warm_up()
            for r in range(args.rounds):
                for leg in legs if r % 2 == 0 else legs[::-1]:
                    fig = (
                        paced(leg, args.rate, args.seconds)
                        if leg.batch == 1
                        else saturated(leg, args.seconds)
                    )
                    runs.setdefault(leg.name, []).append(fig)
                print(f"# round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for leg in legs:
                leg.close()
            _stop(broker)
    res = {k: {f: float(np.median([x[f] for x in v])) for f in v[0]} for k, v in runs.items()}
    print(
        "\n| load | shadow | live windows/s | CPU ms / window | live total p50 ms | live total p99 ms "
        "| shadow infer p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in res.items():
        shadow = "yes" if name.endswith("-shadow") else "no"
        if name.startswith("paced"):
            print(
                f"| {args.rate:g} windows/s, batch 1 | {shadow} | {r['answered'] / args.seconds:.1f} | "
                f"| {r['total_p50_ms']:.2f} | {r['total_p99_ms']:.2f} | {r['shadow_infer_p99_ms']:.2f} |"
            )
        else:
            print(
                f"| saturated, batch {args.batch} | {shadow} | {r['windows_per_s']:.1f} "
                f"| {r['cpu_ms_per_window']:.2f} | | | |"
            )
    rise = res["paced-shadow"]["total_p99_ms"] - res["paced-alone"]["total_p99_ms"]
    print(
        f"\nlive p99 rise with a shadow: {rise:.2f} ms; shadow's own infer p99: "
        f"{res['paced-shadow']['shadow_infer_p99_ms']:.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
