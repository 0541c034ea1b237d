"""``streamfuse keys generate DIR``: a CurveZMQ key pair (:mod:`streamfuse.service.keys`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamfuse.config import Config
from streamfuse.service.keys import generate
from streamfuse.usage import UsageError, check_output_dir


def run(args: argparse.Namespace, cfg: Config) -> int:
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise UsageError(f"--name: expected a plain file name, got {args.name!r}")
    check_output_dir(args.dir, "DIR")
    pub, sec = generate(Path(args.dir), args.name)
    print(f"public key: {pub}")
    print(f"secret key: {sec} (mode 0600; keep it on this host)")
    print("broker: [bus.curve] enabled = true, server_secret = <its .key_secret>, "
          "authorized = <directory holding each allowed client's .key>")
    print("client: [bus.curve] enabled = true, client_secret = <its .key_secret>, "
          "server_public = <the broker's .key>")
    return 0
