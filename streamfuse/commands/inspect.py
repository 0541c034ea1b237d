"""``streamfuse inspect FILE... [--json]``: summarise recordings
(:func:`streamfuse.record.reader.inspect_file`); exit 1 when a file has unreadable records."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from streamfuse.config import Config
from streamfuse.record.reader import RecordingError, expand_paths, inspect_file, print_stats


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        files = expand_paths(args.files)
        results = [inspect_file(p) for p in files]
    except RecordingError as e:
        print(f"streamfuse inspect: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump([asdict(r) for r in results], sys.stdout, indent=2)
        print()
    else:
        for r in results:
            print_stats(r)
    return 0 if all(not r.errors for r in results) else 1
