"""Stand-in children for supervisor tests: real processes with simple, visible behaviour.

``python standin.py ROLE EVENTS_FILE CONFIG [SOURCE]``; every role appends
``<role> start <pid>`` / ``<role> stop <pid>`` to EVENTS_FILE.

- feeder: publishes ``SOURCE/text`` messages at 50 Hz on bus.input.
- echo: subscribes to ``SOURCE/text`` and publishes a ``class/SOURCE`` for every 5th.
- worker / modelworker: report ``no-model`` / ``model`` (streamfuse.readiness).
- every role logs ``hup`` on SIGHUP.
- sleeper: reports ``ready`` (as the recorder does once subscribed), then does nothing until
  SIGTERM.
- lateready: a sleeper that takes 2 s to report ``ready`` (logs ``ready`` just before).
- crasher: exits 1 at once.
- stubborn: ignores SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main() -> int:
    role, events, cfg_path = sys.argv[1:4]
    source = sys.argv[4] if len(sys.argv) > 4 else "room1"
    stop = threading.Event()

    def log(what: str) -> None:
        with open(events, "a") as f:
            f.write(f"{os.environ.get('STREAMFUSE_CHILD', role)} {what} {os.getpid()}\n")

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: log("hup"))
    log("start")
    if role == "crasher":
        return 1  # before the imports below: crash loops stay fast on a loaded machine
    import zmq

    from streamfuse import config, readiness
    from streamfuse.wire import codec
    from streamfuse.wire.sockets import connect_pub, connect_sub

    cfg = config.load(cfg_path)
    if role == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if role == "worker":
        readiness.report("no-model", looked=cfg.fusion.model)
    if role == "modelworker":
        readiness.report("model", model_id="standin0")
    if role == "sleeper":
        readiness.report("ready")
    if role == "lateready" and not stop.wait(2.0):
        log("ready")
        readiness.report("ready")
    ctx = zmq.Context()
    try:
        if role == "feeder":
            pub = connect_pub(ctx, cfg.bus)
            seq = 0
            while not stop.wait(0.02):
                pub.send_multipart(codec.encode(codec.text_message(source, seq, seq, "x")))
                seq += 1
            pub.close()
        elif role == "echo":
            sub = connect_sub(ctx, cfg.bus, [f"{source}/text"])
            pub = connect_pub(ctx, cfg.bus)
            n = 0
            while not stop.is_set():
                if sub.poll(50):
                    sub.recv_multipart()
                    n += 1
                    if n % 5 == 0:
                        pub.send_multipart(codec.encode(codec.class_message(source, n, 0, n, "seven", 1.0, b'{"label": "seven"}')))
            sub.close()
            pub.close()
        else:
            while not stop.wait(0.05):
                pass
    finally:
        ctx.term()
    log("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
