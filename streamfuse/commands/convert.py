"""``streamfuse convert FILE... [--out PATH]``: rewrite old recordings in the current
(Foxglove) layout (:mod:`streamfuse.record.convert`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamfuse.record import reader
from streamfuse.record.convert import convert_file, converted_path


def run(args: argparse.Namespace, _cfg: object) -> int:
    srcs = [Path(f) for f in args.files]
    if args.out and len(srcs) != 1:
        print("streamfuse convert: --out takes one input file", file=sys.stderr)
        return 2
    code = 0
    for src in srcs:
        dst = Path(args.out) if args.out else converted_path(src)
        if dst.exists():
            print(f"streamfuse convert: {dst} exists; not overwriting it", file=sys.stderr)
            code = 1
            continue
        try:
            reader.check_file(src)
            counts, errors = convert_file(src, dst)
        except reader.RecordingError as e:
            print(f"streamfuse convert: {e}", file=sys.stderr)
            code = 1
            continue
        except OSError as e:
            print(f"streamfuse convert: cannot write {dst}: {e.strerror or e}", file=sys.stderr)
            code = 1
            continue
        print(f"{src} -> {dst}: {sum(counts.values())} messages")
        for channel, n in sorted(counts.items()):
            print(f"  {channel}: {n}")
        if errors:
            print(f"  unreadable records skipped: {dict(errors)}")
            code = 1
    return code

