#!/usr/bin/env python3
"""Print the daemon's classifications: a ZeroMQ SUB socket and a JSON parser, nothing else.

    python examples/subscriber.py                      # ipc:///run/streamfuse/out, all sources
    python examples/subscriber.py --endpoint tcp://127.0.0.1:5561 --source room1 --count 10

Each message is ``[topic, header, payload]``; ``topic`` is ``class/<source>`` and
``payload`` one UTF-8 JSON object (DESIGN.md section 3). The MessagePack header
repeats a few fields and is ignored here, so this needs only ``pyzmq``.
"""

from __future__ import annotations

import argparse
import json
import sys

import zmq


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", default="ipc:///run/streamfuse/out", help="the daemon's bus.output")
    p.add_argument("--source", default="", help="only this source (default: every source)")
    p.add_argument("--count", type=int, default=0, help="exit after N classifications (0 = never)")
    p.add_argument("--timeout", type=float, default=0, help="exit 1 after S seconds with nothing (0 = wait)")
    args = p.parse_args()

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.maxmsgsize = 64 * 1024 * 1024  # never accept a larger message from the network
    # Every classification's topic starts with "class/": one prefix selects them all.
    sub.subscribe(f"class/{args.source}" if args.source else "class/")
    sub.connect(args.endpoint)
    n = 0
    try:
        while not args.count or n < args.count:
            if not sub.poll(int(args.timeout * 1000) if args.timeout else None):
                print(f"no classification within {args.timeout:g} s", file=sys.stderr)
                return 1
            topic, *rest = sub.recv_multipart()
            if not topic.startswith(b"class/") or len(rest) < 2:
                continue
            c = json.loads(rest[1])
            present = "+".join(k for k, v in c["present"].items() if v)
            print(f"{c['source']} {c['label']} {max(c['scores'].values()):.2f} [{present}] "
                  f"{c['latency_ms']['total']:.1f} ms", flush=True)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
