"""The broker: a real process forwarding real ZeroMQ messages byte for byte."""

from __future__ import annotations

import numpy as np
import zmq

from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_pub, connect_sub
from tests.helpers.proc import wait_for

T = 1_790_000_000_000_000_000  # a plausible capture time (decoders refuse 1970)


def test_broker_forwards_messages_unchanged(broker) -> None:
    bus = broker.cfg.bus
    with zmq.Context() as ctx:
        sub = connect_sub(ctx, bus, ["room1/"])
        pub = connect_pub(ctx, bus)
        try:
            frame = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
            msg = codec.frame_message("room1", 0, T + 123, frame)
            got = []

            def deliver() -> bool:
                # PUB/SUB join asynchronously: publish until the subscription has propagated.
                pub.send_multipart(codec.encode(msg), copy=False)
                if sub.poll(50):
                    got.append(sub.recv_multipart())
                return bool(got)

            wait_for(deliver, timeout=10, what="first message through the broker")
            decoded = codec.decode(got[0])
            assert decoded == msg
            assert np.array_equal(decoded.array(), frame)
            # A topic nobody subscribed to is not delivered.
            pub.send_multipart(codec.encode(codec.text_message("room2", 0, T + 1, "x")), copy=False)
            pub.send_multipart(codec.encode(codec.text_message("room1", 1, T + 2, "é")), copy=False)
            while True:
                assert sub.poll(5000)
                m = codec.decode(sub.recv_multipart())
                if m.kind == "text":
                    break
            assert m.topic == "room1/text" and m.text() == "é"
        finally:
            pub.close()
            sub.close()


def test_broker_refuses_non_loopback_tcp_without_keys(bus_env) -> None:
    from tests.helpers.proc import run_streamfuse

    bus_env.write('[bus]\npublic = "tcp://0.0.0.0:45611"\n')
    r = run_streamfuse(["broker", "--config", str(bus_env.path)])
    assert r.returncode == 2
    assert "bus.public: tcp://0.0.0.0:45611 is reachable from the network" in r.stderr
