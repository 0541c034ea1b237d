"""A real daemon's recording decoded as Foxglove decodes it, and its live Foxglove server.

The recording is decoded with nothing but the schemas stored in it: Python's ``mcap`` with
``mcap_protobuf``'s decoder factory plus JSON Schema validation, and Node's ``@mcap/core`` with
``protobufjs`` types built from the file's FileDescriptorSet (tests/node/decode_mcap.js)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import zmq
from mcap.reader import make_reader
from mcap_protobuf.decoder import DecoderFactory

from streamfuse import clock
from streamfuse.wire import codec, topics
from streamfuse.wire.sockets import connect_sub
from tests.helpers.proc import wait_for
from tests.integration.daemon_fixtures import Daemon, Feeder

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
FEED_S = 3.0


class ExtraFeed:
    """What the daemon's Feeder does not send: raw frames, text and a label (source cam9)."""

    def __init__(self, feeder: Feeder, shape: tuple[int, int, int], period_ns: int) -> None:
        self.pub = feeder.pub
        self.shape, self.period_ns = shape, period_ns
        self.rng = np.random.default_rng(5)
        self.frames: dict[int, np.ndarray] = {}
        self.texts: dict[int, str] = {}
        self.next_ns = clock.now_ns()
        self.i = 0

    def step(self) -> None:
        now = clock.now_ns()
        if now < self.next_ns:
            return
        img = self.rng.integers(0, 255, self.shape, dtype=np.uint8)
        self.frames[now] = img
        self.pub.send_multipart(
            codec.encode(codec.frame_message("cam9", self.i, now, img)), copy=False
        )
        if self.i % 3 == 0:
            self.texts[now + 1] = text = f"word {self.i} é"
            self.pub.send_multipart(
                codec.encode(codec.text_message("cam9", self.i // 3, now + 1, text))
            )
        if self.i == 2:
            self.pub.send_multipart(
                codec.encode(codec.label_message("cam9", 0, now + 2, now + 10**9, "seven"))
            )
        self.i += 1
        self.next_ns = now + self.period_ns


def _until_delivered(ctx: zmq.Context, bus_env, feeder: Feeder) -> None:
    """Feed until room1's messages come out of the broker: a new PUB drops what it sends
    before the broker's subscription reaches it, and cam9's frames are counted exactly."""
    probe = connect_sub(ctx, bus_env.cfg.bus, ["room1/"])
    try:

        def delivered() -> bool:
            feeder.step()
            return bool(probe.poll(10))

        wait_for(delivered, timeout=30, interval=0.01, what="room1 through the broker")
    finally:
        probe.close(linger=0)


def run_fed_daemon(
    bus_env,
    extra: str,
    on_step: Any = None,
    *,
    feed_s: float = FEED_S,
    shape: tuple[int, int, int] = (24, 32, 3),
    period_ns: int = 200_000_000,
) -> tuple[Feeder, ExtraFeed]:
    """A daemon fed until classifications flow, then ``feed_s`` seconds more, cam9 sending
    ``shape`` frames every ``period_ns``; ``on_step()`` is called between feeds. Returns the
    feeders (closed) for what they sent."""
    daemon = Daemon(bus_env, extra)
    classes: list[bytes] = []
    try:
        daemon.wait_ready()
        with zmq.Context() as ctx:
            sub = connect_sub(ctx, bus_env.cfg.bus, [topics.CLASS_PREFIX])
            feeder = Feeder(ctx, bus_env.cfg.bus)
            _until_delivered(ctx, bus_env, feeder)
            more = ExtraFeed(feeder, shape, period_ns)
            try:

                def fed() -> bool:
                    feeder.step()
                    more.step()
                    while sub.poll(0):
                        classes.append(sub.recv_multipart()[0])
                    if on_step is not None:
                        on_step()
                    return len(classes) >= 2

                wait_for(fed, timeout=90, interval=0.01, what="classifications")
                end = time.monotonic() + feed_s
                while time.monotonic() < end:
                    fed()
                    time.sleep(0.01)
            finally:
                feeder.close()
                sub.close()
    finally:
        assert daemon.close() == 0
    return feeder, more


def decode_with_file_schemas(path: Path) -> list[tuple[str, str, int, Any]]:
    """``(topic, schema name, log_time, decoded)`` of every message, using only the file's
    schemas; JSON messages are validated against their channel's JSON Schema."""
    out = []
    factory = DecoderFactory()
    decoders: dict[int, Any] = {}
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=False):
            dec = decoders.get(channel.id)
            if dec is None and channel.message_encoding == "protobuf":
                dec = decoders[channel.id] = factory.decoder_for(channel.message_encoding, schema)
            elif dec is None and channel.message_encoding == "json":
                assert schema.encoding == "jsonschema"
                validator = jsonschema.Draft202012Validator(json.loads(schema.data))

                def dec(data: bytes, v: Any = validator) -> Any:
                    obj = json.loads(data)
                    v.validate(obj)
                    return obj

                decoders[channel.id] = dec
            elif dec is None:
                dec = decoders[channel.id] = bytes
            out.append((channel.topic, schema.name, message.log_time, dec(message.data)))
    return out


def node_decode(path: Path) -> list[dict[str, Any]]:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node/npm not installed: the Node decoding check cannot run")
    if not (NODE_DIR / "node_modules").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            timeout=600,
            capture_output=True,
        )
    r = subprocess.run(
        ["node", str(NODE_DIR / "decode_mcap.js"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.slow
def test_a_daemon_recording_decodes_with_only_its_own_schemas(bus_env) -> None:
    feeder, more = run_fed_daemon(bus_env, "[record]\nenabled = true\nchunk_kb = 64\n")
    (path,) = sorted((bus_env.root / "recordings").glob("*.mcap"))
    got = decode_with_file_schemas(path)
    schemas = {topic: name for topic, name, _t, _d in got}
    assert {
        k: schemas.get(k)
        for k in (
            "/room1/video",
            "/room1/audio",
            "/class/room1",
            "/cam9/video",
            "/cam9/text",
            "/cam9/label",
            "/streamfuse/wire/room1/text",
        )
    } == {
        "/room1/video": "foxglove.CompressedImage",
        "/room1/audio": "foxglove.RawAudio",
        "/class/room1": "streamfuse.Classification",
        "/cam9/video": "foxglove.RawImage",
        "/cam9/text": "foxglove.Log",
        "/cam9/label": "foxglove.Log",
        "/streamfuse/wire/room1/text": "streamfuse.wire.v1",
    }
    counts = Counter(topic for topic, *_ in got)
    assert (
        counts["/room1/video"] >= 20
        and counts["/room1/audio"] >= 100
        and counts["/class/room1"] >= 2
    )
    want_jpeg = cv2.imdecode(np.frombuffer(feeder.jpeg, np.uint8), cv2.IMREAD_COLOR)
    for topic, name, t, d in got:
        if name.startswith("foxglove."):
            assert d.timestamp.ToNanoseconds() == t
        if name == "foxglove.CompressedImage":
            assert d.format == "jpeg" and d.frame_id == "room1"
            assert np.array_equal(
                cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_COLOR), want_jpeg
            )
        elif name == "foxglove.RawImage":
            assert (d.encoding, d.step) == ("bgr8", 3 * d.width)
            pixels = np.frombuffer(d.data, np.uint8).reshape(d.height, d.width, 3)
            assert np.array_equal(pixels, more.frames[t])
        elif name == "foxglove.RawAudio":
            assert (d.format, d.sample_rate, d.number_of_channels) == ("pcm-f32", 16000, 1)
            assert np.array_equal(np.frombuffer(d.data, np.float32), feeder.block.ravel())
        elif topic == "/cam9/text":
            assert (d.message, d.name) == (more.texts[t], "cam9")
        elif topic == "/cam9/label":
            assert (d.message, d.name) == ("seven", "cam9")
        elif topic == "/class/room1":
            assert d["source"] == "room1" and d["label"] in d["scores"]
    assert counts["/cam9/video"] == len(more.frames) and counts["/cam9/text"] == len(more.texts)
    # Node, as Foxglove's web app reads it: the same messages, the same bytes.
    node = node_decode(path)
    assert len(node) == len(got)
    by_key = {(topic, t): d for topic, _n, t, d in got}
    for line in node:
        d = by_key[(line["topic"], int(line["log_time"]))]
        f = line["fields"]
        if line["encoding"] == "protobuf":
            assert f["timestamp_ns"] == line["log_time"]
        if "data_sha256" in f:
            assert f["data_sha256"] == hashlib.sha256(d.data).hexdigest()
        if line["topic"] == "/class/room1":
            assert f == {k: v for k, v in d.items()}
        if line["topic"] == "/cam9/text":
            assert f["message"] == d.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FoxgloveClient:
    """A minimal Foxglove WebSocket client: advertise, subscribe, messageData."""

    def __init__(self, url: str, max_queue: int = 16) -> None:
        from websockets.sync.client import connect

        self._conn = connect(
            url,
            subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"],
            open_timeout=10,
            max_queue=max_queue,
            max_size=None,
        )
        self.ws = self._conn.__enter__()
        self.channels: dict[int, dict[str, Any]] = {}
        self.subs: dict[int, int] = {}  # subscription id -> channel id
        self.received: dict[str, list[tuple[int, bytes]]] = {}

    def poll(self, want: set[str]) -> None:
        """Take what arrived; subscribe to advertised channels whose topic is in ``want``."""
        while True:
            try:
                msg = self.ws.recv(timeout=0.005)
            except TimeoutError:
                return
            if isinstance(msg, str):
                op = json.loads(msg)
                if op.get("op") == "advertise":
                    new = []
                    for ch in op["channels"]:
                        self.channels[ch["id"]] = ch
                        if ch["topic"] in want:
                            sid = len(self.subs) + 1
                            self.subs[sid] = ch["id"]
                            new.append({"id": sid, "channelId": ch["id"]})
                    if new:
                        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": new}))
            elif msg[0] == 1:  # messageData: opcode, u32 subscription, u64 log time, data
                sid, t = struct.unpack_from("<IQ", msg, 1)
                topic = self.channels[self.subs[sid]]["topic"]
                self.received.setdefault(topic, []).append((t, msg[13:]))

    def close(self) -> None:
        self._conn.__exit__(None, None, None)


@pytest.mark.slow
def test_live_foxglove_server_serves_frames_and_classifications(bus_env) -> None:
    from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage

    port = _free_port()
    client: list[FoxgloveClient] = []
    want = {"/room1/video", "/class/room1", "/room1/audio"}

    def connect_and_poll() -> None:
        if not client:
            try:
                client.append(FoxgloveClient(f"ws://127.0.0.1:{port}"))
            except OSError:
                return  # the bridge is not listening yet
        client[0].poll(want)

    try:
        feeder, _more = run_fed_daemon(
            bus_env,
            f'[foxglove]\nlisten = "127.0.0.1:{port}"\nmax_fps = 5\n',
            on_step=connect_and_poll,
        )
    finally:
        if client:
            client[0].close()
    assert client, "never connected to the Foxglove server"
    c = client[0]
    advertised = {ch["topic"]: ch for ch in c.channels.values()}
    assert advertised["/room1/video"]["schemaName"] == "foxglove.CompressedImage"
    assert advertised["/room1/video"]["encoding"] == "protobuf"
    assert advertised["/room1/audio"]["schemaName"] == "foxglove.RawAudio"
    assert advertised["/class/room1"]["schemaName"] == "streamfuse.Classification"
    assert advertised["/class/room1"]["encoding"] == "json"
    frames, classes = c.received.get("/room1/video", []), c.received.get("/class/room1", [])
    assert len(frames) >= 3 and classes, {k: len(v) for k, v in c.received.items()}
    # max_fps = 5 of a 10 fps camera; the window starts once subscribed.
    span_s = (frames[-1][0] - frames[0][0]) / 1e9
    assert len(frames) <= 5 * span_s + 2
    want_jpeg = cv2.imdecode(np.frombuffer(feeder.jpeg, np.uint8), cv2.IMREAD_COLOR)
    for t, data in frames:
        img = CompressedImage()
        img.ParseFromString(data)
        assert img.timestamp.ToNanoseconds() == t
        assert np.array_equal(
            cv2.imdecode(np.frombuffer(img.data, np.uint8), cv2.IMREAD_COLOR), want_jpeg
        )
    validator = jsonschema.Draft202012Validator(json.loads(advertised["/class/room1"]["schema"]))
    for _t, data in classes:
        validator.validate(json.loads(data))


@pytest.mark.slow
def test_a_stalled_client_does_not_hold_up_the_bridge(bus_env) -> None:
    """One client subscribes to raw VGA frames and then never reads (its socket fills
    within a second at 4.6 MB/s); another client keeps receiving them at max_fps."""
    port = _free_port()
    clients: dict[str, FoxgloveClient] = {}
    want = {"/cam9/video", "/class/room1"}
    stalled_at: list[int] = []  # ns

    def step() -> None:
        if not clients:
            try:
                clients["live"] = FoxgloveClient(f"ws://127.0.0.1:{port}")
                clients["stalled"] = FoxgloveClient(f"ws://127.0.0.1:{port}", max_queue=1)
            except OSError:
                clients.clear()
                return  # the bridge is not listening yet
        clients["live"].poll(want)
        stalled = clients["stalled"]
        if not stalled_at:
            stalled.poll(want | {"/room1/audio"})  # 50 blocks/s: its backlog overflows
            if "/cam9/video" in {stalled.channels[c]["topic"] for c in stalled.subs.values()}:
                stalled_at.append(clock.now_ns())  # subscribed: from now on it reads nothing

    try:
        run_fed_daemon(
            bus_env,
            f'[foxglove]\nlisten = "127.0.0.1:{port}"\nmax_fps = 5\n',
            on_step=step,
            feed_s=6.0,
            shape=(480, 640, 3),
            # 20 fps of raw VGA (18 MB/s through the broker; max_fps passes 5 of them): enough
            # to fill the stalled client's socket, and a third less work for a busy machine
            period_ns=50_000_000,
        )
    finally:
        for c in clients.values():
            c.close()
    assert stalled_at, "the stalled client never subscribed"
    frames = [t for t, _data in clients["live"].received.get("/cam9/video", [])]
    end_ns = max(t for t, _d in clients["live"].received["/class/room1"])
    stalled_s = (end_ns - stalled_at[0]) / 1e9
    assert stalled_s > 4, stalled_s
    # Frames kept coming at max_fps to the end, while the other client read nothing.
    late = [t for t in frames if t > stalled_at[0]]
    live = clients["live"]
    log = (bus_env.root / "daemon.log").read_text()
    assert len(late) >= 5 * stalled_s * 0.6, (
        len(late), len(frames), stalled_s,
        sorted(live.channels[c]["topic"] for c in live.subs.values()),
        {k: len(v) for k, v in live.received.items()},
        [ln for ln in log.splitlines() if "oxglove" in ln or "outbox" in ln][-8:])
    assert end_ns - late[-1] < 2 * 10**9
    # ... and the stalled client did not hold up the bridge's stop either.
    assert "outbox for client" in log  # the server did drop for the stalled client
    assert "foxglove did not stop" not in log and "Foxglove bridge: " in log
