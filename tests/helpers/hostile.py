"""A hostile publisher and the observers a fault test needs around a real daemon.

The hostile side builds every message by hand, ``[topic, msgspec.msgpack.encode(header),
payload...]``, never with the project's codec, so a test does not share the code it
attacks. The observers read what any outside client can: classifications on the bus
(JSON payloads) and the Prometheus text format on the metrics port (tests/helpers/prom.py).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq

from streamfuse import clock
from tests.helpers.proc import wait_for

SCHEMA_VERSION = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def header(kind: str, source: str, stream: str, *, seq: int, t_ns: int, **fields: object) -> bytes:
    """A MessagePack header map, as any client in any language would write it."""
    return msgspec.msgpack.encode({"v": SCHEMA_VERSION, "kind": kind, "source": source,
                                   "stream": stream, "seq": seq, "t_ns": t_ns, **fields})


def text_parts(source: str, *, seq: int, t_ns: int, text: str = "hostile") -> list[bytes]:
    return [f"{source}/text".encode(), header("text", source, "text", seq=seq, t_ns=t_ns),
            text.encode()]


class HostilePub:
    """A plain PUB on ``bus.input``; :meth:`warm` waits until the broker forwards it."""

    def __init__(self, ctx: zmq.Context, input_endpoint: str, output_endpoint: str) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.connect(input_endpoint)
        self.probe = ctx.socket(zmq.SUB)
        self.probe.linger = 0
        self.probe.subscribe(b"probe/")
        self.probe.connect(output_endpoint)

    def warm(self, timeout: float = 20) -> None:
        """Send labels of an unaligned source until one comes back through the broker
        (a PUB drops what it sends before its connection is up)."""
        def through() -> bool:
            t = clock.now_ns()
            self.pub.send_multipart([b"probe/label", header("label", "probe", "label", seq=0,
                                                            t_ns=t, label="x", t_end_ns=t)])
            return bool(self.probe.poll(50))

        wait_for(through, timeout=timeout, what="the hostile publisher to reach the broker")

    def send(self, parts: list[bytes]) -> None:
        self.pub.send_multipart(parts)

    def close(self) -> None:
        self.pub.close()
        self.probe.close()


@dataclass
class Classification:
    source: str
    t_start_ns: int
    received_ns: int


@dataclass
class Collector:
    """Collects every classification of ``topics`` in a thread of its own."""

    ctx: zmq.Context
    endpoint: str
    topics: list[str]
    got: list[Classification] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="class-collector")
        self.thread.start()

    def _run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        for t in self.topics:
            sub.subscribe(t.encode())
        sub.connect(self.endpoint)
        try:
            while not self.stop.is_set():
                if not sub.poll(50):
                    continue
                parts = sub.recv_multipart()
                body = json.loads(parts[-1])
                with self.lock:
                    self.got.append(Classification(body["source"], body["t_start_ns"],
                                                   clock.now_ns()))
        finally:
            sub.close()

    def snapshot(self) -> list[Classification]:
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def child_pids(parent: int, argv_part: str) -> list[int]:
    """PIDs of ``parent``'s live children whose command line contains ``argv_part``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and argv_part in cmdline:
            out.append(int(entry.name))
    return out
