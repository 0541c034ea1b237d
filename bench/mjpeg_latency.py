"""Capture-to-bus latency of the MJPEG camera path.

An MJPEG-over-HTTP camera (``tests/helpers/mjpeg.py``, 30 fps, counter-coded frames)
is read by a real ``streamfuse capture video`` process, published through a real
``streamfuse broker``, and received by this script. For every frame:

- ``total``   = received from the bus - the camera server sent the frame;
- ``grab``    = the frame's ``t_ns`` (grab time) - sent (HTTP + OpenCV decode);
- ``to_bus``  = received - ``t_ns`` (resize/encode, publish, broker, subscriber).

Reference in the same run: the same camera read by ``cv2.VideoCapture`` in this process
alone (``opencv_only`` = decoded - sent), the floor any capture process can reach.

    .venv/bin/python bench/mjpeg_latency.py                 # 640x480 raw, 8 s
    .venv/bin/python bench/mjpeg_latency.py --encoding jpeg --seconds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

from streamfuse.stats import percentile  # noqa: E402
from streamfuse.wire import codec  # noqa: E402
from tests.helpers import media  # noqa: E402
from tests.helpers.mjpeg import MjpegCamera  # noqa: E402


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": float(a.max())}


def opencv_only(cam: MjpegCamera, seconds: float) -> list[float]:
    """Latency of cv2.VideoCapture alone on the same stream (ms)."""
    cap = cv2.VideoCapture(cam.url, cv2.CAP_FFMPEG)
    out = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ok, img = cap.read()
            now = time.time_ns()
            if not ok:
                break
            n = media.read_counter(img)
            if n is not None and n in cam.sent_ns:
                out.append((now - cam.sent_ns[n]) / 1e6)
    finally:
        cap.release()
    return out[5:]  # skip the connection's first frames


def through_streamfuse(cam: MjpegCamera, seconds: float, encoding: str, width: int, height: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="sf-mjpeg-") as d:
        root = Path(d)
        cfg = root / "bench.toml"
        cfg.write_text(
            f'[bus]\ninput = "ipc://{root}/in"\noutput = "ipc://{root}/out"\n[metrics]\nlisten = ""\n'
            f'[[sources]]\nname = "cam"\n[sources.video]\ndevice = "{cam.url}"\nwidth = {width}\n'
            f'height = {height}\nencoding = "{encoding}"\n')
        broker = subprocess.Popen([sys.executable, "-m", "streamfuse", "broker", "--config", str(cfg)],
                                  stderr=subprocess.DEVNULL)
        capture = None
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"cam/video")
        try:
            deadline = time.monotonic() + 20
            while not (root / "out").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("broker did not start")
                time.sleep(0.02)
            sub.connect(f"ipc://{root}/out")
            capture = subprocess.Popen([sys.executable, "-m", "streamfuse", "capture", "video", "--source",
                                        "cam", "--config", str(cfg)], stderr=subprocess.DEVNULL)
            total, grab, to_bus = [], [], []
            frames = 0
            end = None
            while end is None or time.monotonic() < end:
                if not sub.poll(10000):
                    raise RuntimeError("no frames from the capture")
                m = codec.decode(sub.recv_multipart(copy=False))
                now = time.time_ns()
                if m.kind != "frame":
                    continue
                frames += 1
                if frames <= 10:  # connection warm-up
                    continue
                end = end or time.monotonic() + seconds
                img = m.array() if m.header.encoding == "raw" else \
                    cv2.imdecode(np.frombuffer(bytes(m.payload[0]), np.uint8), cv2.IMREAD_COLOR)
                n = media.read_counter(img)
                if n is None or n not in cam.sent_ns:
                    continue
                sent = cam.sent_ns[n]
                total.append((now - sent) / 1e6)
                grab.append((m.t_ns - sent) / 1e6)
                to_bus.append((now - m.t_ns) / 1e6)
        finally:
            if capture is not None:
                capture.terminate()
                capture.wait(10)
            sub.close()
            ctx.term()
            broker.terminate()
            broker.wait(10)
    return {"total": pct(total), "grab": pct(grab), "to_bus": pct(to_bus)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--encoding", choices=["raw", "jpeg"], default="raw")
    ap.add_argument("--json", metavar="F", default=None)
    args = ap.parse_args()
    with MjpegCamera(fps=args.fps, width=args.width, height=args.height) as cam:
        ref = pct(opencv_only(cam, min(args.seconds, 4.0)))
        res = through_streamfuse(cam, args.seconds, args.encoding, args.width, args.height)
    res["opencv_only"] = ref
    res["command"] = " ".join(sys.argv)
    print(f"MJPEG {args.width}x{args.height} @ {args.fps:g} fps, encoding {args.encoding}, latency in ms")
    print(f"{'':22} {'n':>5} {'p50':>7} {'p99':>7} {'max':>7}")
    for key, label in (("opencv_only", "opencv alone (ref)"), ("grab", "server -> t_ns (grab)"),
                       ("to_bus", "t_ns -> subscriber"), ("total", "capture-to-bus total")):
        r = res[key]
        if r.get("n"):
            print(f"{label:22} {r['n']:5d} {r['p50']:7.2f} {r['p99']:7.2f} {r['max']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
