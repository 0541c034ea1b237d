"""Fusion model on a CUDA device: batch 1 to 256, host-to-device copy shown apart, AMP.

    .venv/bin/python bench/gpu_infer.py [--batches 1,2,4,8,16,32,64,128,256] [--iters 30] [--json OUT]

One short run (well under 2 minutes on a GPU). Per batch size, each stage timed on
its own with CUDA events (median and p99 over ``--iters``):

- ``collate``: the CPU part (JPEG decode, resize, tokenise), ms per batch;
- ``h2d``: pinning + non-blocking copies of the batch to the device, as the
  worker does them (``features._move``), and the bytes moved;
- ``prep``: device preprocessing (normalisation, log-mel) on tensors already there;
- ``fwd amp`` / ``fwd fp32``: ``predict_proba`` under autocast (bf16 where
  supported, else fp16) and in float32;
- ``e2e``: h2d + prep + AMP forward + copying the scores back (what the worker
  pays per batch after collate), giving windows/s.

Same windows and model as ``bench/infer.py`` (what ``streamfuse train`` builds by
default, random weights, or ``--model DIR``; avdigits-like 128x128 JPEG frames,
1 s of 16 kHz audio).
``--device cpu`` runs the same code without CUDA (a smoke test, no events).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from infer import build_model, make_windows  # noqa: E402

from streamfuse.fusion.features import Preprocessing, RawBatch, _move, collate, to_device  # noqa: E402
from streamfuse.fusion.model import FusionModel  # noqa: E402
from streamfuse.fusion.node import _autocast  # noqa: E402
from streamfuse.stats import percentile  # noqa: E402


class Timer:
    """Elapsed ms of a block: CUDA events on a GPU, perf_counter otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn):  # type: ignore[no-untyped-def]
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return out, start.elapsed_time(end)
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3


def stats(xs: list[float]) -> tuple[float, float]:
    return percentile(xs, 50), percentile(xs, 99)


def bench_batch(model: FusionModel, prep: Preprocessing, dev: torch.device, timer: Timer, ws: list,
                iters: int) -> dict:
    """All stages for one batch size (see the module docstring)."""
    b = len(ws)
    t = []
    for _ in range(3):
        t0 = time.perf_counter()
        raw = collate(ws, prep)
        t.append((time.perf_counter() - t0) * 1e3)
    tensors = {f.name: getattr(raw, f.name) for f in dataclasses.fields(raw)
               if isinstance(getattr(raw, f.name), torch.Tensor)}
    kb = sum(x.numel() * x.element_size() for x in tensors.values()) / 1024

    def copy() -> RawBatch:
        return dataclasses.replace(raw, **{k: _move(v, dev) for k, v in tensors.items()})

    on_dev = copy()

    def prep_fn() -> object:
        return to_device(on_dev, prep, dev)

    feats = to_device(on_dev, prep, dev)

    def fwd_amp() -> torch.Tensor:
        with _autocast(dev):
            return model.predict_proba(feats)

    def fwd_fp32() -> torch.Tensor:
        return model.predict_proba(feats)

    def e2e() -> np.ndarray:
        with _autocast(dev):
            return model.predict_proba(to_device(raw, prep, dev)).float().cpu().numpy()

    res: dict[str, list[float]] = {k: [] for k in ("h2d", "prep", "amp", "fp32", "e2e")}
    for i in range(iters + 5):  # 5 warm-up iterations
        for key, fn in (("h2d", copy), ("prep", prep_fn), ("amp", fwd_amp), ("fp32", fwd_fp32)):
            _, ms = timer(fn)
            if i >= 5:
                res[key].append(ms)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        e2e()  # ends with .cpu(): synchronised
        if i >= 5:
            res["e2e"].append((time.perf_counter() - t0) * 1e3)
    s = {k: stats(v) for k, v in res.items()}
    return {"batch": b, "collate_ms": float(np.median(t)), "h2d_kb": kb,
            **{f"{k}_p50_ms": v[0] for k, v in s.items()}, **{f"{k}_p99_ms": v[1] for k, v in s.items()},
            "windows_per_s": b / (s["e2e"][0] / 1e3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fusion", choices=["concat", "mean", "weighted", "attention"], default=None)
    ap.add_argument("--encoder", choices=["stride", "pool"], default=None)
    ap.add_argument("--model", type=Path, default=None, help="a trained artifact (default: trainer defaults)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_infer: CUDA is not available here (use --device cpu for a smoke test)", file=sys.stderr)
        return 1
    batches = [int(b) for b in args.batches.split(",")]
    model, prep, align = build_model(args.model, encoder=args.encoder, fusion=args.fusion)
    model = model.to(dev)
    windows = make_windows(max(batches), frames_per_window=prep.frames_per_window, window_ms=align["window_ms"])
    timer = Timer(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    amp_dtype = "none"
    if dev.type == "cuda":
        amp_dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(f"# {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, AMP {amp_dtype}, "
          f"{args.iters} iterations per stage; model {args.model or 'trainer defaults'}: {model.cfg.fusion} "
          f"fusion, encoder {model.cfg.encoder}, {prep.image_size} px, {prep.n_mels} mels", flush=True)
    print("\n| batch | collate ms | h2d ms (KB) | prep ms | fwd amp ms | fwd fp32 ms | e2e ms p50 / p99 | windows/s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    with torch.inference_mode():
        for b in batches:
            row = bench_batch(model, prep, dev, timer, windows[:b], args.iters)
            rows.append(row)
            print(f"| {b} | {row['collate_ms']:.2f} | {row['h2d_p50_ms']:.3f} ({row['h2d_kb']:.0f}) "
                  f"| {row['prep_p50_ms']:.3f} | {row['amp_p50_ms']:.3f} | {row['fp32_p50_ms']:.3f} "
                  f"| {row['e2e_p50_ms']:.2f} / {row['e2e_p99_ms']:.2f} | {row['windows_per_s']:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "amp": amp_dtype,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
