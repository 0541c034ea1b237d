"""The console's bus subscriber: a thread that keeps :class:`ConsoleState` current.

It subscribes to everything on ``bus.output`` with a small receive queue: when
this process falls behind, the broker drops messages for it alone (a PUB never
blocks on a slow subscriber), so the console can never hold up the pipeline.
The socket is created and closed in the thread that uses it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import zmq

from streamfuse import clock, metrics
from streamfuse.config import BusConfig
from streamfuse.web.state import ConsoleState
from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_sub, max_message_bytes

log = logging.getLogger("streamfuse.web")
NODE = "web"
RCVHWM = 100  # messages queued for this process; more are dropped by the broker, for us only
POLL_MS = 100


class BusReader:
    """``start()`` a daemon thread that decodes every bus message into ``state``."""

    def __init__(self, bus: BusConfig, state: ConsoleState, ctx: zmq.Context | None = None) -> None:
        self.bus = bus
        self.state = state
        self.ctx = ctx or zmq.Context.instance()
        self.stop = threading.Event()
        self.received = 0
        self.errors: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="web-bus", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        sub = connect_sub(self.ctx, self.bus, [""], hwm=RCVHWM)
        max_bytes = max_message_bytes(self.bus)
        try:
            while not self.stop.is_set():
                if not sub.poll(POLL_MS):
                    continue
                while True:
                    try:
                        parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._one(parts, max_bytes)
        finally:
            sub.close(linger=0)

    def _one(self, parts: list[zmq.Frame], max_bytes: int) -> None:
        try:
            msg = codec.decode(parts, max_bytes=max_bytes)
        except codec.DecodeError as e:
            self.errors[e.reason] += 1
            metrics.dropped.labels(node=NODE, topic="?", reason=e.reason).inc()
            return
        self.received += 1
        try:
            self.state.push(msg, clock.monotonic_ns())
        except (ValueError, TypeError) as e:  # a well-formed message the console cannot show
            self.errors["state"] += 1
            log.debug("web: %s not shown: %s", msg.topic, e)
