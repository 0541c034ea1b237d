"""How fast ``streamfuse replay --max`` publishes a 3-stream VGA recording.

Builds a recording of raw 640x480 video at 30 fps (real footage from
``DATA/video/box.mp4`` when present, else generated frames), 16 kHz audio in
20 ms blocks and one text message per second, then measures in the same run:

1. the bare ``mcap`` reader iterating every message (decompression only): the ceiling;
2. streamfuse's reader (``read_raw``: merge, unframe) without sockets;
3. ``streamfuse replay --max`` as a real process into a real broker, with a
   subscriber in this process counting every message (lost = recorded - received).

Speeds are multiples of real time (recorded duration / wall time). Goal: replay
at least 20x. Run: ``.venv/bin/python bench/replay_speed.py [--seconds 20] [--data $DATA]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from mcap.reader import make_reader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamfuse import clock  # noqa: E402
from streamfuse.config import load  # noqa: E402
from streamfuse.record import reader  # noqa: E402
from streamfuse.record.writer import RecordingWriter  # noqa: E402
from streamfuse.wire import codec  # noqa: E402
from streamfuse.wire.sockets import connect_sub  # noqa: E402

T0 = 1_700_000_000_000_000_000


def frames(data: Path | None, n: int = 90) -> list[np.ndarray]:
    video = data / "video" / "box.mp4" if data else None
    out: list[np.ndarray] = []
    if video is not None and video.exists():
        import cv2

        cap = cv2.VideoCapture(str(video))
        while len(out) < n:
            ok, f = cap.read()
            if not ok:
                break
            if f.shape != (480, 640, 3):
                f = cv2.resize(f, (640, 480))
            out.append(np.ascontiguousarray(f))
        cap.release()
    if not out:  # generated: a moving gradient with noise, compresses like a real camera
        rng = np.random.default_rng(0)
        base = np.add.outer(np.arange(480), np.arange(640)).astype(np.uint8)
        out = [np.dstack([base + i, base // 2, base // 3 + i]) + rng.integers(0, 8, (480, 640, 3), dtype=np.uint8)
               for i in range(n)]
    return out


def make_recording(path: Path, seconds: float, data: Path | None) -> tuple[int, int]:
    imgs = frames(data)
    n_msgs = 0
    with RecordingWriter(path) as w:
        n_video, n_audio = int(seconds * 30), int(seconds * 50)
        events = [(T0 + i * 1_000_000_000 // 30, "v", i) for i in range(n_video)]
        events += [(T0 + i * 20_000_000, "a", i) for i in range(n_audio)]
        events += [(T0 + i * 1_000_000_000 + 7_000_000, "t", i) for i in range(int(seconds))]
        rng = np.random.default_rng(1)
        for t, kind, i in sorted(events):
            if kind == "v":
                m = codec.frame_message("room1", i, t, imgs[i % len(imgs)])
            elif kind == "a":
                block = (0.1 * rng.standard_normal((320, 1))).astype(np.float32)
                m = codec.audio_message("room1", i, t, block, 16000)
            else:
                m = codec.text_message("room1", i, t, f"the digit is {i % 10}")
            w.write_message(m)
            n_msgs += 1
    return n_msgs, int(seconds * 1e9)


def bare_mcap(path: Path) -> tuple[int, float]:
    t = clock.perf_ns()
    with open(path, "rb") as f:
        n = sum(1 for _ in make_reader(f).iter_messages())
    return n, (clock.perf_ns() - t) / 1e9


def our_reader(path: Path) -> tuple[int, float]:
    t = clock.perf_ns()
    n = sum(1 for _ in reader.read_raw([path]))
    return n, (clock.perf_ns() - t) / 1e9


def replay_through_broker(path: Path, tmp: Path, expected: int) -> dict[str, float]:
    cfg_path = tmp / "bench.toml"
    cfg_path.write_text(f'[bus]\ninput = "ipc://{tmp}/in"\noutput = "ipc://{tmp}/out"\n[metrics]\nlisten = ""\n')
    cfg = load(cfg_path, environ={})
    py = [sys.executable, "-m", "streamfuse"]
    broker = subprocess.Popen([*py, "broker", "--config", str(cfg_path)], cwd=ROOT)
    try:
        while not (tmp / "in").exists() or not (tmp / "out").exists():
            time.sleep(0.02)
        with zmq.Context() as ctx:
            sub = connect_sub(ctx, cfg.bus, [""], hwm=100_000)
            time.sleep(0.2)  # let the subscription reach the broker before replay connects
            start = clock.perf_ns()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.Popen([*py, "replay", str(path), "--max", "--config", str(cfg_path)], cwd=ROOT,
                                    stderr=subprocess.PIPE, text=True)
            n = 0
            first = last = 0
            nbytes = 0
            while n < expected and sub.poll(3000):
                parts = sub.recv_multipart(copy=False)
                last = clock.perf_ns()
                if not n:
                    first = last
                n += 1
                nbytes += sum(len(p) for p in parts)
            err = proc.communicate(timeout=60)[1]
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the replay process, now reaped
            sub.close()
        total = (clock.perf_ns() - start) / 1e9
    finally:
        broker.terminate()
        broker.wait(10)
    line = [ln for ln in err.splitlines() if "replayed" in ln]
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return {"received": n, "lost": expected - n, "first_to_last_s": (last - first) / 1e9, "replay_cpu_s": cpu,
            "process_s": total, "mb_per_s": nbytes / 1e6 / max((last - first) / 1e9, 1e-9),
            "replay_log": line[-1] if line else err.strip()[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the recording")
    ap.add_argument("--data", type=Path, default=os.environ.get("DATA"),
                    help="the real-media directory (default: $DATA; without it, generated frames)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = args.data if args.data and args.data.exists() else None
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as d:
        tmp = Path(d)
        rec = tmp / "vga.mcap"
        n, span_ns = make_recording(rec, args.seconds, data)
        st = reader.inspect_file(rec)
        span = st.duration_s
        res: dict[str, object] = {
            "recording": {"messages": n, "seconds": span, "mb_on_disk": round(st.size_bytes / 1e6, 1),
                          "mb_raw": round(st.uncompressed_bytes / 1e6, 1), "ratio": st.compression_ratio,
                          "video": "box.mp4" if data else "generated"}}
        n1, t1 = bare_mcap(rec)
        n2, t2 = our_reader(rec)
        rep = replay_through_broker(rec, tmp, n)
        res["bare_mcap_reader"] = {"messages": n1, "s": round(t1, 3), "x_real_time": round(span / t1, 1)}
        res["streamfuse_read_raw"] = {"messages": n2, "s": round(t2, 3), "x_real_time": round(span / t2, 1)}
        res["replay_max"] = {**{k: round(v, 3) if isinstance(v, float) else v for k, v in rep.items()},
                             "x_real_time": round(span / float(rep["first_to_last_s"]), 1)
                             if rep["first_to_last_s"] else 0.0,
                             "x_real_time_incl_startup": round(span / float(rep["process_s"]), 1)}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    r = res["recording"]
    print(f"recording: {r['messages']} messages, {r['seconds']:.1f} s, {r['mb_raw']} MB raw -> "
          f"{r['mb_on_disk']} MB on disk (zstd {r['ratio']:.2f}x), video {r['video']}")
    for k in ("bare_mcap_reader", "streamfuse_read_raw"):
        v = res[k]
        print(f"{k:22s} {v['messages']:6d} msgs in {v['s']:.2f} s = {v['x_real_time']:.1f}x real time")
    v = res["replay_max"]
    print(f"{'replay --max (broker)':22s} {v['received']:6d} msgs, lost {v['lost']}, first->last "
          f"{v['first_to_last_s']:.2f} s = {v['x_real_time']:.1f}x real time "
          f"({v['x_real_time_incl_startup']:.1f}x incl. process start), {v['mb_per_s']:.0f} MB/s")
    print(f"  replay process CPU {v['replay_cpu_s']:.2f} s (incl. start-up) = "
          f"{r['seconds'] / v['replay_cpu_s']:.1f}x real time per CPU-second")
    print(f"  {v['replay_log']}")


if __name__ == "__main__":
    main()
