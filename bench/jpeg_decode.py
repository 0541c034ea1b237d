"""JPEG frames into a model's input: frames per second the worker's preprocessing makes
from 640x480 JPEG sources, with and without reduced-scale decoding, and windows per second
with the decode-once cache (overlapping windows show each frame twice).

    .venv/bin/python bench/jpeg_decode.py [--video DATA/video/vtest.avi]
        [--frames 300] [--size 32] [--rounds 3] [--json F]

Frames are real footage (any video OpenCV reads, resized to 640x480 and JPEG-encoded at
quality 90) or, without ``--video``, a synthetic scene. Legs run alternated over
``--rounds`` rounds; the median is reported:

- ``full``: ``cv2.imdecode`` at full scale, grayscale, then ``INTER_AREA`` resize;
- ``reduced``: the worker's path (``fusion.features.gray_jpeg``): decode at 1/2, 1/4 or 1/8
  scale when the result still covers the model's input;
- ``windows``: ``collate`` of the windows a source makes (``frames_per_window`` 4, hop half
  the window) through ``fusion.frames.WindowFrames``, counted in frames decoded per second
  of frames shown, against the same windows without the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamfuse import clock  # noqa: E402
from streamfuse.fusion.features import Preprocessing, collate, gray_image, gray_jpeg  # noqa: E402
from streamfuse.fusion.frames import WindowFrames  # noqa: E402
from streamfuse.wire.schema import Window  # noqa: E402


def frames(video: str | None, n: int) -> list[bytes]:
    out: list[bytes] = []
    cap = cv2.VideoCapture(video) if video else None
    rng = np.random.default_rng(0)
    while len(out) < n:
        ok, img = cap.read() if cap is not None else (False, None)
        if not ok:
            if cap is not None and out:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            img = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
        img = cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def full(data: bytes, size: int) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return None if img is None else gray_image(img, size)


def rate(fn, jpegs: list[bytes], size: int) -> float:
    t0 = clock.perf_ns()
    for j in jpegs:
        fn(j, size)
    return len(jpegs) / ((clock.perf_ns() - t0) / 1e9)


def windows(jpegs: list[bytes], per_window: int = 4) -> list[Window]:
    """A 10 fps source's windows: 10 frames each, hop 5 frames, ``per_window`` picked
    nearest to the aligner's instants ``(i + 0.5) * window / per_window``, so that two
    overlapping windows share half their frames, as the aligner's do."""
    out = []
    for k in range(0, len(jpegs) - 10, 5):
        picks = [k + round((i + 0.5) * 10 / per_window) for i in range(per_window)]
        out.append(Window(source="cam", seq=k, t_start_ns=k, t_end_ns=k + 10,
                          present={"video": True}, frames=[jpegs[i] for i in picks],
                          frame_encoding="jpeg", frame_t_ns=picks))
    return out


def window_rate(ws: list[Window], prep: Preprocessing, cached: bool) -> tuple[float, int]:
    """Frames shown per second, and frames decoded."""
    src = WindowFrames() if cached else None
    t0 = clock.perf_ns()
    for i in range(0, len(ws), 8):  # batches of 8 windows
        collate(ws[i:i + 8], prep, src)
    shown = sum(len(w.frames) for w in ws)
    decoded = src.decoded if src is not None else shown
    return shown / ((clock.perf_ns() - t0) / 1e9), decoded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=None)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=32, help="the model's input (image_size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as in a worker sharing the machine
    jpegs = frames(args.video, args.frames)
    prep = Preprocessing(frames_per_window=4, image_size=args.size)
    ws = windows(jpegs)
    runs: dict[str, list[float]] = {k: [] for k in ("full", "reduced", "windows_nocache",
                                                    "windows_cache")}
    decoded = 0
    for _ in range(args.rounds):
        runs["full"].append(rate(full, jpegs, args.size))
        runs["reduced"].append(rate(gray_jpeg, jpegs, args.size))
        runs["windows_nocache"].append(window_rate(ws, prep, False)[0])
        r, decoded = window_rate(ws, prep, True)
        runs["windows_cache"].append(r)
    med = {k: statistics.median(v) for k, v in runs.items()}
    shown = sum(len(w.frames) for w in ws)
    print(f"640x480 JPEG -> {args.size}x{args.size} gray, {len(jpegs)} frames, 1 OpenCV thread:")
    print(f"  full decode + resize   {med['full']:8.0f} frames/s")
    gain = med["reduced"] / med["full"]
    print(f"  reduced-scale decode   {med['reduced']:8.0f} frames/s  ({gain:.1f}x)")
    print(f"  windows, no cache      {med['windows_nocache']:8.0f} frames shown/s "
          f"({shown} decodes)")
    gain = med["windows_cache"] / med["windows_nocache"]
    print(f"  windows, decode once   {med['windows_cache']:8.0f} frames shown/s "
          f"({decoded} decodes, {gain:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"median": med, "runs": runs, "shown": shown,
                                               "decoded_once": decoded}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
