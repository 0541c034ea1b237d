"""The broker from a test's side: a Probe that publishes once subscribers are there, and a
``streamfuse replay`` child whose messages a SUB of the broker's output receives."""

from __future__ import annotations

import contextlib
import subprocess
from collections import Counter
from collections.abc import Iterator

import zmq

from streamfuse.config import BusConfig
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import connect_sub
from tests.helpers.proc import stop, streamfuse, wait_for


class Probe:
    """A publisher on the broker's input that sees the subscriptions the broker
    forwards (XPUB), so a test knows a subscriber is listening before it publishes."""

    def __init__(self, ctx: zmq.Context, bus: BusConfig) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.linger = 2000
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.sndhwm = 100_000
        self.sock.connect(bus.input)
        self.seen: Counter[bytes] = Counter()

    def wait_subscribers(self, prefix: bytes, n: int = 1, timeout: float = 15) -> None:
        def enough() -> bool:
            while self.sock.poll(20):
                m = self.sock.recv()
                if m[:1] == b"\x01":
                    self.seen[m[1:]] += 1
            return self.seen[prefix] >= n

        wait_for(enough, timeout=timeout, what=f"{n} subscriber(s) to {prefix!r}")

    def publish(self, msgs: list[Message]) -> None:
        for m in msgs:
            while True:
                try:
                    self.sock.send_multipart(codec.encode(m), copy=False, flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    self.sock.poll(100, zmq.POLLOUT)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def replaying(bus_env, args: list[str], prefix: str, *, hwm: int | None = None
              ) -> Iterator[tuple[zmq.Socket, subprocess.Popen]]:
    """``(sub, proc)``: a SUB of ``prefix`` on the broker's output, then (once the broker has
    that subscription) ``streamfuse replay ARGS --config ...`` with its stderr piped as text.
    On the way out the replay is stopped and the sockets closed."""
    with zmq.Context() as ctx:
        sub = connect_sub(ctx, bus_env.cfg.bus, [prefix], hwm=hwm)
        probe = Probe(ctx, bus_env.cfg.bus)
        try:
            probe.wait_subscribers(prefix.encode())
            proc = streamfuse(["replay", *args, "--config", str(bus_env.path)], stderr=subprocess.PIPE, text=True)
            try:
                yield sub, proc
            finally:
                stop(proc)
                if proc.stderr:
                    proc.stderr.close()
        finally:
            sub.close()
            probe.close()
