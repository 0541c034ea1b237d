"""``streamfuse dataset avdigits --out DIR ...``: benchmark recordings and labels
(:mod:`streamfuse.datasets.avdigits`); exit 2 on unusable inputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamfuse.config import Config
from streamfuse.datasets.avdigits import Params, build
from streamfuse.usage import UsageError, check_output_dir


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.segments < 1:
        raise UsageError("--segments: must be at least 1")
    check_output_dir(args.out, "--out")
    voices = getattr(args, "synthetic_voices", None) or 0
    segments = getattr(args, "synthetic_segments", None)
    if segments is None:
        segments = 500 if voices else 0
    params = Params(segments=args.segments, seed=args.seed, split=args.split, images=args.images,
                    speech=args.speech, noise=args.noise,
                    synthetic_voices=voices, synthetic_segments=segments,
                    synthetic_full_band=bool(getattr(args, "synthetic_full_band", False)))
    try:
        params.synthetic()
    except ValueError as e:
        raise UsageError(f"--synthetic-voices: {e}") from None
    try:
        summary = build(Path(args.out), params)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except RuntimeError as e:
        print(f"streamfuse dataset: {e}", file=sys.stderr)
        return 1
    for name, s in summary["splits"].items():
        print(f"{args.out}/{name}: {s['segments']} segments in {len(s['files'])} recordings, "
              f"speakers {', '.join(s['speakers'])}, {len(s['images'])} images")
    return 0
