"""Remote peers see no change: frames that went by reference on this host reach a TCP
subscriber on ``bus.public_output`` with their pixels inline, byte for byte what the
inline frame plane sends, while local subscribers keep receiving references."""

from __future__ import annotations

import socket

import cv2
import numpy as np
import pytest
import zmq

from streamfuse.frameplane.writer import PlaneWriter
from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_pub
from tests.helpers.proc import ipc_ready, stop, streamfuse, wait_for

T = 1_700_000_000 * 10**9
SHAPE = (120, 160, 3)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frames() -> list[tuple[np.ndarray | bytes, str]]:
    rng = np.random.default_rng(1)
    out: list[tuple[np.ndarray | bytes, str]] = []
    for _ in range(5):
        img = rng.integers(0, 255, SHAPE, dtype=np.uint8)
        out.append((img, "raw"))
        out.append((cv2.imencode(".jpg", img)[1].tobytes(), "jpeg"))
    return out


def _receive(bus_env, mode: str) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """Publish the frames in ``mode``: what a TCP peer and a local SUB receive."""
    endpoint = f"tcp://127.0.0.1:{_port()}"
    bus_env.write(f'[bus]\nframe_plane = "{mode}"\npublic_output = "{endpoint}"\n')
    cfg = bus_env.cfg
    broker = streamfuse(["broker", "--config", str(bus_env.path)])
    ctx = zmq.Context()
    plane = PlaneWriter.open(cfg.bus, "cam-video", slots=32, nbytes=160 * 120 * 3 + 65536)
    remote: list[list[bytes]] = []
    local: list[list[bytes]] = []
    socks: list[zmq.Socket] = []
    try:
        wait_for(lambda: ipc_ready(cfg.bus.input) and ipc_ready(cfg.bus.output), timeout=15,
                 what="broker")
        pub = connect_pub(ctx, cfg.bus)
        socks.append(pub)
        subs = []
        for ep, got in ((endpoint, remote), (cfg.bus.output, local)):
            s = ctx.socket(zmq.SUB)
            s.linger = 0
            s.subscribe(b"cam/")
            s.connect(ep)
            socks.append(s)
            subs.append((s, got))
        joined: set[int] = set()

        def both_joined() -> bool:  # PUB/SUB joins asynchronously: probe with heartbeats
            pub.send_multipart(codec.encode(codec.heartbeat_message("cam", "video", 0, T)))
            for k, (s, _got) in enumerate(subs):
                while s.poll(20):
                    s.recv_multipart()
                    joined.add(k)
            return len(joined) == len(subs)

        wait_for(both_joined, timeout=15, interval=0, what="both subscribers")
        for seq, (data, enc) in enumerate(_frames()):
            msg = plane.message("cam", seq, T + seq, data, encoding=enc, shape=SHAPE)
            pub.send_multipart(codec.encode(msg), copy=False)
        for s, got in subs:
            def done(s=s, got=got) -> bool:
                while s.poll(20):
                    parts = s.recv_multipart()
                    if codec.decode(parts).kind == "frame":
                        got.append(parts)
                return len(got) >= 10

            wait_for(done, timeout=15, what=f"10 frames on {s.last_endpoint!r}")
    finally:
        for s in socks:
            s.close(linger=0)
        plane.close()
        ctx.term()
        assert stop(broker) == 0
    return remote, local


@pytest.mark.slow
def test_tcp_subscribers_get_pixels_identical_to_inline_mode(bus_env) -> None:
    remote_shm, local_shm = _receive(bus_env, "shm")
    remote_inline, local_inline = _receive(bus_env, "inline")
    assert remote_shm == remote_inline == local_inline
    assert all(codec.decode(p).header.encoding in ("raw", "jpeg") for p in remote_shm)
    assert all(codec.decode(p).header.encoding == "shm" for p in local_shm)


@pytest.mark.slow
def test_a_recording_of_frames_by_reference_equals_the_inline_one(broker, tmp_path) -> None:
    """The recorder writes pixels: messages published by reference are recorded byte for
    byte as their inline form, so replay cannot tell whether the frame plane was on."""
    from tests.helpers.bus import Probe
    from tests.integration.test_record_roundtrip import raw_records, record_published

    cfg = broker.cfg
    inline = [codec.frame_message("cam", seq, T + seq, data, encoding=enc, shape=SHAPE)
              for seq, (data, enc) in enumerate(_frames())]
    plane = PlaneWriter.open(cfg.bus, "cam-video", slots=32, nbytes=160 * 120 * 3 + 65536)
    by_ref = [plane.message("cam", seq, T + seq, data, encoding=enc, shape=SHAPE)
              for seq, (data, enc) in enumerate(_frames())]
    assert all(m.header.encoding == "shm" for m in by_ref)
    with zmq.Context() as ctx:
        probe = Probe(ctx, cfg.bus)
        try:
            path = record_published(broker, probe, tmp_path / "r.mcap", "cam/", by_ref, "the recording")
        finally:
            probe.close()
            plane.close()
    got = [parts for _t, _ts, parts in raw_records(path)]
    assert got == [[bytes(p) for p in codec.encode(m)] for m in inline]
