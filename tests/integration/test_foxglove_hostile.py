"""The live Foxglove bridge (``serve``: the SDK's server, a real SUB socket) against hostile
WebSocket clients and a hostile publisher, without a daemon around it: the bus output is a
PUB this test binds, so it controls every message the bridge receives."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from streamfuse import clock
from streamfuse.bridge import foxglove as fox
from streamfuse.config import parse
from streamfuse.wire import codec
from tests.helpers.proc import wait_for
from tests.integration.test_foxglove_live import FoxgloveClient, _free_port


class Bridged:
    """``foxglove.serve`` on a thread, fed by a PUB bound on the bus output."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        out = f"ipc://{tmp_path}/out"
        self.cfg = parse({"bus": {"input": f"ipc://{tmp_path}/in", "output": out},
                          "foxglove": {"listen": f"127.0.0.1:{self.port}", "max_fps": 1000}},
                         environ={})
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind(out)
        self.stop = threading.Event()
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, name="foxglove-serve")
        self.thread.start()
        self.seq = 0

    def _serve(self) -> None:
        try:
            fox.serve(self.cfg, self.stop)
        except BaseException as e:  # the test asserts there is none
            self.failed.append(e)

    def text(self, t_ns: int | None = None) -> None:
        self.seq += 1
        msg = codec.text_message("room1", self.seq, t_ns or clock.now_ns(), f"m{self.seq}")
        self.pub.send_multipart(codec.encode(msg))

    def client(self, want: set[str]) -> FoxgloveClient:
        """A client subscribed to ``want`` once the bridge advertised them."""
        got: list[FoxgloveClient] = []
        tries: list[int] = []

        def subscribed() -> bool:
            if not got:
                try:
                    got.append(FoxgloveClient(f"ws://127.0.0.1:{self.port}"))
                except OSError:
                    return False
            self.text()
            if "/room1/label" in want:
                t = clock.now_ns()
                self.pub.send_multipart(codec.encode(codec.label_message("room1", 0, t, t + 1, "x")))
            c = got[0]
            c.poll(want)
            if want <= set(c.received):
                return True
            tries.append(1)
            if len(tries) % 50 == 0:  # the SDK may take a subscription sent right after
                for cid, ch in c.channels.items():  # the advertisement as one to an unknown
                    if ch["topic"] in want:  # channel: ask again
                        sid = len(c.subs) + 1
                        c.subs[sid] = cid
                        c.ws.send(json.dumps({"op": "subscribe",
                                              "subscriptions": [{"id": sid, "channelId": cid}]}))
            return False

        wait_for(subscribed, timeout=30, interval=0.05, what=f"a subscription to {want}")
        return got[0]

    def receives(self, client: FoxgloveClient, topic: str, *, more: int = 3) -> None:
        """``client`` receives ``more`` new messages of ``topic`` (and the bridge runs)."""
        start = len(client.received.get(topic, []))

        def flowing() -> bool:
            assert not self.failed, self.failed
            self.text()
            client.poll(set())
            return len(client.received.get(topic, [])) >= start + more

        wait_for(flowing, timeout=30, interval=0.02, what=f"{more} more messages on {topic}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.pub.close()
        self.ctx.term()


@pytest.fixture
def bridged(tmp_path: Path):
    b = Bridged(tmp_path)
    try:
        yield b
    finally:
        b.close()
    assert not b.thread.is_alive()
    assert not b.failed, b.failed


def _raw_client(port: int) -> Any:
    from websockets.sync.client import connect

    return connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"],
                   open_timeout=10, max_size=None)


HOSTILE_OPS: list[str | bytes] = [
    json.dumps({"op": "subscribe", "subscriptions": [{"id": 1, "channelId": 999_999}]}),
    json.dumps({"op": "subscribe", "subscriptions": [{"id": i, "channelId": 1}
                                                     for i in range(100_000)]}),
    json.dumps({"op": "subscribe", "subscriptions": [{"id": 2**32 + 5, "channelId": -1}]}),
    json.dumps({"op": "subscribe", "subscriptions": "all"}),
    json.dumps({"op": "unsubscribe", "subscriptionIds": list(range(10_000))}),
    json.dumps({"op": "unsubscribe", "subscriptionIds": [-1, 2**70, "x", None]}),
    json.dumps({"op": "advertise", "channels": [{"id": 1, "topic": "/x", "encoding": "json",
                                                 "schemaName": "x"}]}),
    json.dumps({"op": "getParameters", "parameterNames": ["a" * 100_000]}),
    json.dumps({"op": "fetchAsset", "uri": "file:///etc/passwd", "requestId": 1}),
    json.dumps({"op": "subscribeConnectionGraph"}),
    json.dumps({"op": "no such op"}),
    json.dumps([1, 2, 3]),
    "{not json",
    "\x00" * 1000,
    bytes([1]) + os.urandom(2000),  # client message data for a channel it never advertised
    bytes([2]) + os.urandom(64),  # a service call request
    bytes([255]) + os.urandom(1 << 20),
    b"",
]


def test_hostile_clients_leave_the_bridge_serving_the_others(bridged: Bridged) -> None:
    good = bridged.client({"/room1/text"})
    bridged.receives(good, "/room1/text")
    text_channel = next(c for c, ch in good.channels.items() if ch["topic"] == "/room1/text")
    for op in HOSTILE_OPS:
        try:
            with _raw_client(bridged.port) as ws:
                ws.send(op)
                ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                    {"id": 7, "channelId": text_channel}, {"id": 7, "channelId": text_channel}]}))
                ws.send(json.dumps({"op": "unsubscribe", "subscriptionIds": [7, 7, 8]}))
        except OSError:
            pass  # the server may close a client that sent garbage: that is its right
        bridged.receives(good, "/room1/text", more=1)
    # Many clients at once, each subscribing and never reading.
    with contextlib.ExitStack() as crowd:
        for _ in range(50):
            ws = crowd.enter_context(_raw_client(bridged.port))
            ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                {"id": 1, "channelId": text_channel}]}))
        bridged.receives(good, "/room1/text", more=10)
    bridged.receives(good, "/room1/text")
    good.close()


def test_a_negative_time_from_a_publisher_does_not_end_the_bridge(bridged: Bridged) -> None:
    good = bridged.client({"/room1/text", "/room1/label"})
    for stream, extra, payload in (("text", {}, [b"x"]), ("label", {"label": "x"}, [])):
        header = msgspec.msgpack.encode({"v": 1, "kind": stream, "source": "room1",
                                         "stream": stream, "seq": 0, "t_ns": -1, **extra})
        bridged.pub.send_multipart([f"room1/{stream}".encode(), header, *payload])
    bridged.receives(good, "/room1/text")
    assert all(t >= 0 for t, _d in good.received["/room1/text"])
    good.close()
