#!/usr/bin/env python3
"""Print the daemon's classifications: a ZeroMQ SUB socket and a JSON parser, nothing else.

    python examples/subscriber.py                      # ipc:///run/streamfuse/results, all sources
    python examples/subscriber.py --endpoint tcp://127.0.0.1:5562 --source room1 --count 10
    python examples/subscriber.py --endpoint tcp://gpu-host:5562 \\
        --client-secret keys/me.key_secret --server-public keys/server.key   # CurveZMQ

It reads the daemon's results endpoint (``bus.results``, or ``bus.public_results``
from another host), which carries classifications and never frames, audio or
text. Each message is ``[topic, header, payload]``; ``topic`` is
``class/<source>`` and ``payload`` one UTF-8 JSON object (docs/protocol.md,
"Classification"; its JSON Schema is docs/schemas/classification.schema.json).
The MessagePack header repeats a few fields and is ignored here, so this needs
only ``pyzmq``.

CurveZMQ: when the daemon has ``[bus.curve]`` enabled, its TCP endpoints accept
only clients whose public key is in ``bus.curve.authorized``. Make a key pair
with ``streamfuse keys generate DIR --name me``, give the daemon's operator
``DIR/me.key``, and pass ``--client-secret DIR/me.key_secret`` and
``--server-public`` (the daemon's ``server.key``).
"""

from __future__ import annotations

import argparse
import json
import sys

import zmq
import zmq.auth


def _curve_client(sock: zmq.Socket, client_secret: str, server_public: str) -> None:
    """Make ``sock`` a CurveZMQ client: its own key pair and the server's public key."""
    public, secret = zmq.auth.load_certificate(client_secret)
    if secret is None:
        raise SystemExit(f"--client-secret: {client_secret} holds no secret key")
    server, _ = zmq.auth.load_certificate(server_public)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", default="ipc:///run/streamfuse/results",
                   help="the daemon's bus.results (or bus.public_results)")
    p.add_argument("--source", default="", help="only this source (default: every source)")
    p.add_argument("--count", type=int, default=0, help="exit after N classifications (0 = never)")
    p.add_argument("--timeout", type=float, default=0, help="exit 1 after S seconds with nothing (0 = wait)")
    p.add_argument("--client-secret", metavar="FILE", help="CurveZMQ: this client's .key_secret")
    p.add_argument("--server-public", metavar="FILE", help="CurveZMQ: the daemon's public .key")
    args = p.parse_args()
    if bool(args.client_secret) != bool(args.server_public):
        p.error("--client-secret and --server-public go together")

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.maxmsgsize = 1024 * 1024  # a classification is a few hundred bytes: refuse anything huge
    if args.client_secret:
        _curve_client(sub, args.client_secret, args.server_public)
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
