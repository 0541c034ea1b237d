"""Train/serve parity: the trainer's windows (offline, from the file) and the live
aligner's windows (``streamfuse replay`` -> broker -> ``streamfuse align``) of the
same MCAP recording are identical, content hash for content hash."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamfuse import clock
from streamfuse.align.offline import windows_from_messages
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.frameplane.ring import RingReader
from streamfuse.record.reader import read_messages
from streamfuse.record.writer import RecordingWriter
from streamfuse.wire import codec
from streamfuse.wire.schema import Message, Window
from tests.helpers import media
from tests.helpers.frameplane import inline_window
from tests.helpers.proc import ipc_ready, stop, streamfuse, wait_for

CONFIG = """
[align]
max_lateness_ms = 1000  # a replay stalled by a loaded machine must not close windows early
text_context_ms = 1500
[[sources]]
name = "cam"
  [sources.video]
  encoding = "jpeg"
  [sources.audio]
  samplerate = 16000
  [sources.text]
  input = "zmq"
[[sources]]
name = "desk"
  [sources.audio]
  samplerate = 16000
  [sources.text]
  input = "zmq"
"""


def content_hash(w: Window) -> str:
    """Everything a model sees of a window (not when it was closed or sent)."""
    h = hashlib.sha256()
    h.update(repr((w.source, w.seq, w.t_start_ns, w.t_end_ns, sorted(w.present.items()), w.frame_encoding,
                   w.frame_t_ns, w.samplerate, w.audio_coverage, w.texts, w.text_t_ns)).encode())
    for f in w.frames:
        h.update(bytes(f) if not isinstance(f, np.ndarray) else f.tobytes())
    if w.audio is not None:
        h.update(np.ascontiguousarray(w.audio).tobytes())
    return h.hexdigest()


_plane = RingReader()


def inline(w: Window) -> Window:
    return inline_window(w, _plane)


def record(path: Path, t0: int, seconds: int) -> int:
    """A recording like a dataset's: 'cam' has 10 fps JPEG video, 16 kHz audio with
    jittered ADC stamps and a dropped block, text; 'desk' has audio and text only."""
    rng = np.random.default_rng(3)
    msgs: list[Message] = []
    for i in range(seconds * 10):
        jpg = media.jpeg(media.counter_frame(i, 64, 48))
        msgs.append(codec.frame_message("cam", i, t0 + i * 100 * MS + int(rng.integers(0, 3 * MS)), jpg,
                                        encoding="jpeg", shape=(48, 64, 3)))
    for src, off in (("cam", 0), ("desk", 7 * MS)):
        seq = 0
        for i in range(seconds * 50):
            if src == "cam" and i == 60:
                continue
            block = (rng.standard_normal((320, 1)) * 0.1).astype(np.float32)
            msgs.append(codec.audio_message(src, seq, t0 + off + i * 20 * MS + int(rng.integers(-200_000, 200_000)),
                                            block, 16000))
            seq += 1
        for i in range(seconds * 10):
            msgs.append(codec.heartbeat_message(src, "text", i, t0 + off + i * 100 * MS))
    for i, (src, at) in enumerate([("cam", 450), ("desk", 1200), ("cam", 1210), ("cam", 1900)]):
        msgs.append(codec.text_message(src, i, t0 + at * MS, f"{src} {i}"))
    msgs.sort(key=lambda m: m.t_ns)
    with RecordingWriter(path, chunk_size=64 * 1024) as w:
        for m in msgs:
            w.write_message(m)
    return len(msgs)


@pytest.mark.slow
@pytest.mark.parametrize("pace", [["--rate", "1"], ["--max"]], ids=["rate1", "max"])
def test_offline_and_replayed_windows_are_identical(broker, tmp_path: Path, pace: list[str]) -> None:
    broker.write(CONFIG)
    cfg = broker.cfg
    path = tmp_path / "session.mcap"
    # Recorded "last year": the aligner closes windows on the recording's clock.
    t0 = (clock.now_ns() - 365 * 86400 * 10**9) // (500 * MS) * (500 * MS) + 130 * MS
    record(path, t0, 2)
    offline = [(w.source, content_hash(w)) for w in windows_from_messages(read_messages([path]), cfg.align)]
    assert len(offline) > 10
    align = streamfuse(["align", "--config", str(broker.path)])
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    got: list[Window] = []
    try:
        wait_for(lambda: ipc_ready(cfg.align.output), timeout=15, what="aligner's PUSH socket")
        pull.connect(cfg.align.output)

        def received() -> int:
            while pull.poll(20):
                # Frames by reference (a paced replay uses the frame plane) are read at once,
                # as a worker would, while their slots still hold them.
                got.append(inline(codec.decode_window(pull.recv_multipart(copy=False))))
            return len(got)

        replay = streamfuse(["replay", str(path), *pace, "--config", str(broker.path)],
                            stderr=subprocess.PIPE, text=True)
        wait_for(lambda: received() < 0 or replay.poll() is not None, timeout=60, what="the replay")
        assert replay.returncode == 0, replay.communicate()[1]
        replay.stderr.close()

        # The last windows close on the lateness bound, in wall time after the replay ended.
        wait_for(lambda: received() >= len(offline), timeout=20, what=f"{len(offline)} windows")
        received()
    finally:
        pull.close()
        ctx.term()
        assert stop(align) == 0
    live = [(w.source, content_hash(w)) for w in got]
    for src in ("cam", "desk"):
        assert [h for s, h in live if s == src] == [h for s, h in offline if s == src]
    assert len(live) == len(offline)
