"""Fusion worker throughput on this CPU: the bare model beside the whole worker, in one run.

    .venv/bin/python bench/infer.py [--batch 32] [--seconds 3] [--rounds 3] [--threads 1] [--json OUT]

Legs (same windows, same torch thread count, same model):
- ``model``: in-process, no bus: ``collate`` + ``to_device`` + ``predict_proba``
  on already-decoded windows, in batches of 1 and of ``--batch``.
- ``forward``: the model's forward alone on prepared features (for reference).
- ``worker``: a real ``streamfuse broker`` + ``streamfuse fuse`` process with
  ``max_batch`` 1 and ``--batch``; this process PUSHes encoded windows (as the
  aligner does) keeping a bounded number in flight, and counts the
  classifications a SUB socket receives through the broker.

Both workers stay up for the whole run; ``--rounds`` rounds alternate model and
worker legs (the order flips each round) and each leg's median is reported, so
drift on a shared machine affects both sides alike.

Throughput is windows/s of wall time, and also windows per CPU-second (CPU time
of the bench process for ``model``, of the worker process for ``worker``, all
threads): on a shared machine a busy loop gets a smaller slice than a process
that sleeps between batches, so the CPU figures are the fairer comparison there.
Latency: per batch for ``model``/``forward``
(p50/p99 ms); for ``worker`` the payload's ``latency_ms.infer`` (its batch's
preprocessing + model time) and ``total`` (which, at saturation, is mostly
queueing). Windows look like the avdigits camera/mic: 4 JPEG frames of 128x128
(a blurred scene with a digit and sensor noise), 1 s of 16 kHz audio, one text.
The model is what ``streamfuse train`` builds by default (``TrainOptions``:
attention fusion, the "pool" encoder, 28 px frames, 32 mels at 20 ms hops;
10 classes, random weights: speed does not depend on their values), or a
trained artifact with ``--model DIR``; ``--encoder stride`` measures the cheaper encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamfuse import clock  # noqa: E402
from streamfuse.config import AlignConfig  # noqa: E402
from streamfuse.fusion.artifact import ALIGN_KEYS, load_artifact, save_artifact  # noqa: E402
from streamfuse.fusion.features import Preprocessing, collate, to_device  # noqa: E402
from streamfuse.fusion.model import FusionModel, ModelConfig  # noqa: E402
from streamfuse.stats import percentile  # noqa: E402
from streamfuse.wire import codec  # noqa: E402
from streamfuse.wire.schema import Window  # noqa: E402

CLASSES = [str(i) for i in range(10)]


def build_model(model_dir: Path | None = None, *, encoder: str | None = None,
                fusion: str | None = None) -> tuple[FusionModel, Preprocessing, dict]:
    """The model to measure and the aligner parameters it was made for.

    ``model_dir``: a trained artifact. Otherwise the trainer's default
    architecture (``streamfuse.train.loop.TrainOptions``: what ``streamfuse
    train`` builds) with random weights (speed does not depend on their values).
    """
    if model_dir is not None:
        loaded = load_artifact(model_dir)
        return loaded.model, loaded.prep, dict(loaded.manifest["align"])
    from streamfuse.train.loop import TrainOptions

    o = TrainOptions()
    align = AlignConfig()
    prep = o.preprocessing(align)
    torch.manual_seed(0)
    cfg = ModelConfig.for_preprocessing(
        CLASSES, prep, fusion=fusion or o.fusion, modalities=o.modalities, encoder=encoder or o.encoder,
        video_channels=o.video_channels, audio_channels=o.audio_channels, embed_dim=o.embed_dim,
        dropout=o.dropout)
    return FusionModel(cfg).eval(), prep, {k: getattr(align, k) for k in ALIGN_KEYS}


def make_windows(n: int, seed: int = 0, source: str = "room1", *, frames_per_window: int = 4,
                 window_ms: int = 1000) -> list[Window]:
    rng = np.random.default_rng(seed)
    out = []
    samples = window_ms * 16
    for i in range(n):
        frames = []
        for _ in range(frames_per_window):
            img = cv2.GaussianBlur(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), (0, 0), 4)
            cv2.putText(img, str(i % 10), (40, 90), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 255, 255), 6)
            img = np.clip(img.astype(np.int16) + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
            frames.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        t0 = i * 500_000_000
        out.append(Window(source=source, seq=i, t_start_ns=t0, t_end_ns=t0 + window_ms * 1_000_000,
                          present={"video": True, "audio": True, "text": True}, frames=frames,
                          frame_encoding="jpeg", frame_t_ns=[t0] * frames_per_window,
                          audio=(0.1 * rng.standard_normal((samples, 1))).astype(np.float32), samplerate=16000,
                          audio_coverage=1.0, texts=[f"i think it is {i % 10}"], text_t_ns=[t0],
                          close_ns=t0 + window_ms * 1_000_000))
    return out


def bench_model(model: FusionModel, prep: Preprocessing, windows: list[Window], batch: int,
                seconds: float) -> dict:
    """collate + to_device + predict_proba, in process."""
    lat: list[float] = []
    n = i = 0
    with torch.inference_mode():
        model.predict_proba(to_device(collate(windows[:batch], prep), prep))  # warm-up
        cpu0 = time.process_time()
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds or n < 4 * batch:
            ws = [windows[(i + k) % len(windows)] for k in range(batch)]
            i += batch
            t0 = time.perf_counter()
            model.predict_proba(to_device(collate(ws, prep), prep))
            lat.append((time.perf_counter() - t0) * 1e3)
            n += batch
        el = time.perf_counter() - t_start
        cpu = time.process_time() - cpu0
    return {"windows_per_s": n / el, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "windows": n,
            "cpu_ms_per_window": cpu / n * 1e3}


def bench_forward(model: FusionModel, prep: Preprocessing, windows: list[Window], batch: int,
                  seconds: float) -> dict:
    feats = to_device(collate(windows[:batch], prep), prep)
    lat: list[float] = []
    with torch.inference_mode():
        model.predict_proba(feats)
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds or len(lat) < 4:
            t0 = time.perf_counter()
            model.predict_proba(feats)
            lat.append((time.perf_counter() - t0) * 1e3)
        el = time.perf_counter() - t_start
    return {"windows_per_s": len(lat) * batch / el, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


# ----------------------------------------------------------------------------- worker


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the worker's ``streamfuse_batch_size`` histogram."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    vals = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith(("streamfuse_batch_size_sum", "streamfuse_batch_size_count"))}
    return vals.get("streamfuse_batch_size_sum", 0.0), vals.get("streamfuse_batch_size_count", 0.0)


ALIGN: dict = {}  # the model's aligner parameters, written into every config


def _config(root: Path, model_dir: Path, batch: int, threads: int, delay_ms: float, metrics_port: int = 0) -> Path:
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    path = root / f"bench-{batch}.toml"
    path.write_text(
        f'[bus]\ninput = "ipc://{run}/in"\noutput = "ipc://{run}/out"\nhwm = 100000\n'
        f'[align]\noutput = "ipc://{run}/windows-{batch}"\n'
        + "".join(f"{k} = {v}\n" for k, v in ALIGN.items())
        + f'[fusion]\nmodel = "{model_dir}"\ndevice = "cpu"\nmax_batch = {batch}\nmax_delay_ms = {delay_ms}\n'
        f'threads = {threads}\nreload_poll_s = 60\n[metrics]\n'
        f'listen = "{f"127.0.0.1:{metrics_port}" if metrics_port else ""}"\n')
    return path


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMFUSE_LOG": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "streamfuse", *args], env=env,
                            stderr=log.open("w"), stdout=subprocess.DEVNULL)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class WorkerLeg:
    """A running ``streamfuse fuse`` (max_batch = ``batch``) fed by a PUSH, read by a SUB."""

    def __init__(self, root: Path, model_dir: Path, windows: list[Window], batch: int, threads: int,
                 delay_ms: float) -> None:
        self.root, self.windows, self.batch = root, windows, batch
        self.metrics_port = _free_port()
        cfg_path = _config(root, model_dir, batch, threads, delay_ms, self.metrics_port)
        run = root / "run"
        self.log = root / f"fuse-{batch}.log"
        self.proc = _spawn(["fuse", "--config", str(cfg_path)], self.log)
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.bind(f"ipc://{run}/windows-{batch}")
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = 100000
        self.sub.setsockopt(zmq.SUBSCRIBE, f"b{batch}-".encode())
        self.sub.connect(f"ipc://{run}/out")
        self.seq = 0

    def send(self, tag: str) -> None:
        w = self.windows[self.seq % len(self.windows)]
        now = clock.now_ns()
        # The window "ended" now and closed at once: latency_ms.total = queue + infer.
        length = w.t_end_ns - w.t_start_ns
        t0 = now - length + self.seq  # + seq: every key distinct
        w2 = Window(source=f"b{self.batch}-{tag}", seq=self.seq, t_start_ns=t0, t_end_ns=t0 + length,
                    present=w.present, frames=w.frames, frame_encoding=w.frame_encoding,
                    frame_t_ns=w.frame_t_ns, audio=w.audio, samplerate=w.samplerate, audio_coverage=1.0,
                    texts=w.texts, text_t_ns=w.text_t_ns, close_ns=t0 + length, emit_ns=now)
        self.seq += 1
        self.push.send_multipart(codec.encode_window(w2), copy=False)

    def recv(self, timeout_ms: int) -> list[dict]:
        out = []
        while self.sub.poll(timeout_ms if not out else 0):
            out.append(json.loads(codec.decode(self.sub.recv_multipart()).text()))
        return out

    def warm_up(self) -> None:
        """Until classifications flow (model loaded, subscriptions propagated)."""
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not answer: {self.log.read_text()[-2000:]}")
            for _ in range(self.batch):
                self.send("warm")
            if self.recv(500):
                break
        while self.recv(300):
            pass

    def measure(self, seconds: float) -> dict:
        """Saturate the worker for ``seconds`` (a bounded number in flight), then collect the rest."""
        cap = max(4, 3 * self.batch)
        sent = received = 0
        infer: list[float] = []
        total: list[float] = []
        sum0, count0 = _batch_stats(self.metrics_port)
        cpu0 = _cpu_s(self.proc.pid)
        t_start = t_last = time.perf_counter()
        while True:
            sending = time.perf_counter() - t_start < seconds
            while sending and sent - received < cap:
                self.send("room1")
                sent += 1
            if not sending and received >= sent:
                break
            for body in self.recv(1000):
                if not body["source"].endswith("-room1"):
                    continue
                received += 1
                infer.append(body["latency_ms"]["infer"])
                total.append(body["latency_ms"]["total"])
                t_last = time.perf_counter()
            if time.perf_counter() - t_last > 20:
                raise RuntimeError(f"worker stalled: sent {sent}, received {received}")
        cpu = _cpu_s(self.proc.pid) - cpu0
        sum1, count1 = _batch_stats(self.metrics_port)
        return {"windows_per_s": received / (t_last - t_start), "cpu_ms_per_window": cpu / received * 1e3,
                "mean_batch": (sum1 - sum0) / max(1.0, count1 - count0),
                "infer_p50_ms": percentile(infer, 50),
                "infer_p99_ms": percentile(infer, 99), "total_p50_ms": percentile(total, 50), "total_p99_ms": percentile(total, 99),
                "windows": received}

    def close(self) -> None:
        _stop(self.proc)
        self.push.close()
        self.sub.close()
        self.ctx.term()


def _median(rs: list[dict]) -> dict:
    out = {k: float(np.median([r[k] for r in rs])) for k in rs[0] if k != "runs_windows_per_s"}
    out["runs_windows_per_s"] = [round(r["windows_per_s"], 1) for r in rs]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32, help="max_batch of the batching legs")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each leg in each round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, model legs and worker alike")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="worker max_delay_ms")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--model", type=Path, default=None, help="a trained artifact (default: the trainer's "
                    "default architecture with random weights)")
    ap.add_argument("--encoder", choices=["stride", "pool"], default=None, help="override the encoder")
    ap.add_argument("--fusion", choices=["concat", "mean", "weighted", "attention"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, prep, align = build_model(args.model, encoder=args.encoder, fusion=args.fusion)
    ALIGN.update(align)
    windows = make_windows(128, frames_per_window=prep.frames_per_window, window_ms=align["window_ms"])
    c = model.cfg
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, "
          f"batch {args.batch}, {args.seconds:.0f} s per leg; model {args.model or 'trainer defaults'}: "
          f"{c.fusion} fusion, encoder {c.encoder}, {prep.image_size} px, {prep.n_mels} mels, "
          f"hop {prep.hop_length}", flush=True)
    res: dict = {"config": {k: str(v) for k, v in vars(args).items()}}
    b = args.batch
    runs: dict[str, list[dict]] = {f"{leg}_{bs}": [] for leg in ("model", "worker") for bs in (1, b)}
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        save_artifact(root / "model", model, prep, align=ALIGN)
        broker = _spawn(["broker", "--config", str(_config(root, root / "model", 1, args.threads, 5))],
                        root / "broker.log")
        legs: list[WorkerLeg] = []
        try:
            legs = [WorkerLeg(root, root / "model", windows, bs, args.threads, args.delay_ms) for bs in (1, b)]
            for leg in legs:
                leg.warm_up()
            for bs in (1, b):
                res[f"forward_{bs}"] = bench_forward(model, prep, windows, bs, args.seconds / 4)
            # Rounds of model, worker at each batch size, alternating, so drift on a
            # shared machine affects both sides alike; the median of each leg is reported.
            for r in range(args.rounds):
                for leg in (legs if r % 2 == 0 else legs[::-1]):
                    bs = leg.batch
                    runs[f"model_{bs}"].append(bench_model(model, prep, windows, bs, args.seconds))
                    runs[f"worker_{bs}"].append(leg.measure(args.seconds))
                print(f"# round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for leg in legs:
                leg.close()
            _stop(broker)
    for key, rs in runs.items():
        res[key] = _median(rs)
    print("\n| leg | batch | windows/s (wall) | CPU ms / window | windows/s per CPU core | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for bs in (1, b):
        r = res[f"forward_{bs}"]
        print(f"| model forward only (features ready) | {bs} | {r['windows_per_s']:.1f} | | "
              f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    for bs in (1, b):
        r = res[f"model_{bs}"]
        print(f"| bare model: collate + features + forward | {bs} | {r['windows_per_s']:.1f} "
              f"| {r['cpu_ms_per_window']:.2f} | {1e3 / r['cpu_ms_per_window']:.1f} "
              f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    for bs in (1, b):
        r = res[f"worker_{bs}"]
        print(f"| whole worker (bus, broker, JSON), mean batch {r['mean_batch']:.1f}; "
              f"latency_ms.infer / .total | {bs} | {r['windows_per_s']:.1f} "
              f"| {r['cpu_ms_per_window']:.2f} | {1e3 / r['cpu_ms_per_window']:.1f} "
              f"| {r['infer_p50_ms']:.2f} / {r['total_p50_ms']:.1f} | {r['infer_p99_ms']:.2f} / {r['total_p99_ms']:.1f} |")

    def per_cpu(key: str) -> float:
        return 1e3 / res[key]["cpu_ms_per_window"]

    ratios = {
        "batching_gain_model_wall": res[f"model_{b}"]["windows_per_s"] / res["model_1"]["windows_per_s"],
        "batching_gain_worker_wall": res[f"worker_{b}"]["windows_per_s"] / res["worker_1"]["windows_per_s"],
        "batching_gain_model_cpu": per_cpu(f"model_{b}") / per_cpu("model_1"),
        "batching_gain_worker_cpu": per_cpu(f"worker_{b}") / per_cpu("worker_1"),
        "worker_vs_model_batch1_wall": res["worker_1"]["windows_per_s"] / res["model_1"]["windows_per_s"],
        f"worker_vs_model_batch{b}_wall": res[f"worker_{b}"]["windows_per_s"] / res[f"model_{b}"]["windows_per_s"],
        "worker_vs_model_batch1_cpu": per_cpu("worker_1") / per_cpu("model_1"),
        f"worker_vs_model_batch{b}_cpu": per_cpu(f"worker_{b}") / per_cpu(f"model_{b}"),
    }
    res["ratios"] = ratios
    print()
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    for key in runs:
        print(f"({key} windows/s per round: {res[key]['runs_windows_per_s']})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
