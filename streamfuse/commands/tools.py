"""``streamfuse tail``, ``streamfuse send`` and ``streamfuse devices``
(:mod:`streamfuse.capture.tools`)."""

from __future__ import annotations

import argparse
import os
import sys

from streamfuse.capture import tools
from streamfuse.config import Config, ConfigError
from streamfuse.signals import Signals
from streamfuse.wire import topics


def tail(args: argparse.Namespace, cfg: Config) -> int:
    stop = Signals().stop
    classes = bool(args.classes or (args.topic and topics.is_class_topic(args.topic)))
    if args.count is not None and args.count <= 0:
        raise ConfigError("--count: expected a positive number")
    opts = tools.TailOptions(prefix=args.topic or "", classes=classes, endpoint=args.endpoint,
                             count=args.count, duration_s=args.duration)
    tools.tail(cfg, opts, stop)
    return 0


def send(args: argparse.Namespace, cfg: Config) -> int:
    """One message to the text capture of ``--source``."""
    # argv holds undecodable bytes as surrogates: send the user's exact bytes.
    raw = os.fsencode(args.text)
    try:
        tools.send(cfg, args.source, raw, args.timeout)
    except tools.SendError as e:
        print(f"streamfuse send: {e}", file=sys.stderr)
        return 1
    return 0


def devices(args: argparse.Namespace, cfg: Config) -> int:
    cams = tools.list_cameras()
    print("cameras:")
    print("\n".join(cams) if cams else "  no cameras found")
    mics, why = tools.list_audio_inputs()
    print("audio inputs:")
    print("\n".join(mics) if mics
          else f"  no audio input devices found{f' ({why})' if why else ''}")
    return 0
