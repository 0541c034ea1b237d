"""Frames by reference change nothing a model sees: the same recording replayed through
real processes (broker, ``align``, ``fuse``) with ``frame_plane = "shm"`` and with
``"inline"`` is answered with the same windows and the same scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamfuse import clock
from streamfuse.align.offline import windows_from_messages
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.record.writer import RecordingWriter
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import connect_pub
from tests.conftest import BusEnv
from tests.helpers import media
from tests.helpers.fusion import save_tiny
from tests.helpers.proc import ipc_ready, run_streamfuse, stop, streamfuse, wait_for

pytestmark = pytest.mark.slow


CONFIG = """
[align]
max_lateness_ms = 1000  # a replay stalled by a loaded machine must not close windows early
[fusion]
max_batch = 8
max_delay_ms = 2
threads = 1
model = "{model}"
"""


def recording(path: Path, t0: int, seconds: int) -> list[Message]:
    """'cam': 10 fps raw 64x48 frames, 'jpg': 10 fps JPEG; both with 16 kHz audio."""
    rng = np.random.default_rng(5)
    msgs: list[Message] = []
    for i in range(seconds * 10):
        img = media.counter_frame(i, 64, 48)
        noisy = np.clip(img.astype(int) + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
        t = t0 + i * 100 * MS + int(rng.integers(0, 3 * MS))
        msgs.append(codec.frame_message("cam", i, t, noisy))
        msgs.append(codec.frame_message("jpg", i, t + 5 * MS, media.jpeg(noisy), encoding="jpeg",
                                        shape=(48, 64, 3)))
    for k, src in enumerate(("cam", "jpg")):
        for i in range(seconds * 50):
            block = (rng.standard_normal((320, 1)) * 0.1).astype(np.float32)
            msgs.append(codec.audio_message(src, i, t0 + k * MS + i * 20 * MS, block, 16000))
    msgs.sort(key=lambda m: m.t_ns)
    with RecordingWriter(path, chunk_size=64 * 1024) as w:
        for m in msgs:
            w.write_message(m)
    return msgs


def classify(root: Path, mode: str, rec: Path, model: Path, want: int) -> tuple[dict, int]:
    """Replay ``rec`` through a pipeline in ``mode``: ``{(source, t_start): body}`` and
    the number of frames that crossed the bus by reference."""
    env = BusEnv(root, CONFIG.format(model=model) + f'[bus]\nframe_plane = "{mode}"\n')
    cfg = env.cfg
    log = (root / "pipeline.log").open("w")
    procs = [streamfuse(["broker", "--config", str(env.path)], stderr=log)]
    ctx = zmq.Context()
    got: dict[tuple[str, int], dict] = {}
    by_ref = [0]
    try:
        wait_for(lambda: ipc_ready(cfg.bus.input) and ipc_ready(cfg.bus.output), timeout=15,
                 what="broker")
        procs += [streamfuse([cmd, "--config", str(env.path)], stderr=log)
                  for cmd in ("align", "fuse")]
        pub = connect_pub(ctx, cfg.bus)
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(cfg.bus.output)

        def receive(timeout_ms: int) -> int:
            while sub.poll(timeout_ms):
                timeout_ms = 0
                msg = codec.decode(sub.recv_multipart(copy=False))
                if msg.kind == "frame" and msg.header.encoding == "shm":
                    by_ref[0] += 1
                elif msg.kind == "class":
                    body = json.loads(msg.text())
                    got[(body["source"], body["t_start_ns"])] = body
            return len(got)

        seq = [0]

        def warm() -> bool:  # the chain carries a window end to end (subscriptions, model)
            hello = codec.text_message("warm", seq[0], clock.now_ns(), "hi")
            pub.send_multipart(codec.encode(hello))
            seq[0] += 1
            receive(50)
            return any(s == "warm" for s, _ in got)

        wait_for(warm, timeout=90, interval=0, what="a warm-up classification")
        pub.close(linger=0)
        r = run_streamfuse(["replay", str(rec), "--rate", "1", "--config", str(env.path)],
                           timeout=60)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: sum(s != "warm" for s, _ in got) >= want or receive(50) < 0, timeout=30,
                 what=f"{want} classifications")
        receive(300)
        sub.close()
    finally:
        codes = [stop(p, timeout=20) for p in reversed(procs)]
        ctx.term()
        log.close()
    assert codes == [0, 0, 0]
    return {k: v for k, v in got.items() if k[0] != "warm"}, by_ref[0]


def test_shm_and_inline_give_the_same_classifications(tmp_path: Path) -> None:
    t0 = (clock.now_ns() - 365 * 86400 * 10**9) // (500 * MS) * (500 * MS) + 130 * MS
    rec = tmp_path / "session.mcap"
    msgs = recording(rec, t0, 3)
    model = tmp_path / "model"
    env = BusEnv(tmp_path / "offline", CONFIG.format(model=model))
    save_tiny(model, env.cfg.align)
    want = {(w.source, w.t_start_ns): w for w in windows_from_messages(msgs, env.cfg.align)}
    assert len(want) >= 8
    inline, inline_refs = classify(tmp_path / "inline", "inline", rec, model, len(want))
    shm, shm_refs = classify(tmp_path / "shm", "shm", rec, model, len(want))
    assert inline_refs == 0 and shm_refs == 30 * 2  # every frame of both sources by reference
    assert set(shm) == set(inline) == set(want)
    for key, body in inline.items():
        other = shm[key]
        assert other["present"] == body["present"] and body["present"]["video"] == \
            want[key].present["video"], key
        assert other["label"] == body["label"]
        for label, score in body["scores"].items():
            assert abs(other["scores"][label] - score) <= 1e-6, (key, label)
