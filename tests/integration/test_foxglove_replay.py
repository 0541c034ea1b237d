"""Replay stays exact in the Foxglove layout, and old recordings still replay and convert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq
from mcap.writer import Writer

from streamfuse.clock import NS_PER_MS as MS
from streamfuse.record import format as fmt
from streamfuse.record import reader
from streamfuse.record.writer import RecordingWriter
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from tests.helpers.bus import Probe, replaying
from tests.helpers.proc import run_streamfuse, stop, wait_for
from tests.integration.test_record_roundtrip import count_raw, start_recorder

T0 = 1_700_000_000_000_000_000


def every_kind(n: int = 40) -> list[Message]:
    """Raw and JPEG frames, audio in two sample formats, text, heartbeats, labels and
    classifications, in t_ns order."""
    import cv2

    rng = np.random.default_rng(3)
    msgs: list[Message] = []
    for i in range(n):
        t = T0 + i * 25 * MS
        img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        msgs.append(codec.frame_message("room1", i, t, img))
        msgs.append(
            codec.frame_message(
                "room2",
                i,
                t + 1,
                cv2.imencode(".jpg", img)[1].tobytes(),
                encoding="jpeg",
                shape=(24, 32, 3),
            )
        )
        msgs.append(
            codec.audio_message(
                "room1", i, t + 2, rng.standard_normal((320, 1)).astype(np.float32), 16000
            )
        )
        msgs.append(
            codec.audio_message(
                "room2", i, t + 3, rng.integers(-9000, 9000, (160, 2), dtype=np.int16), 8000
            )
        )
        if i % 4 == 0:
            msgs.append(codec.text_message("room1", i // 4, t + 4, f"word {i} é"))
            msgs.append(codec.heartbeat_message("room2", "text", i // 4, t + 5))
        if i % 10 == 0:
            msgs.append(codec.label_message("room1", i // 10, t + 6, t + 500 * MS, "seven"))
            scores = {"seven": 0.75 - i / 1000, "zero": 0.25 + i / 1000}
            payload = json.dumps(
                {
                    "source": "room1",
                    "t_start_ns": t - 1000 * MS,
                    "t_end_ns": t,
                    "label": "seven",
                    "scores": scores,
                    "present": {"video": True, "audio": True, "text": False},
                    "model": "m1",
                    "latency_ms": {"align": 1.0, "queue": 0.5, "infer": 2.0, "total": 3.5},
                }
            ).encode()
            msgs.append(
                codec.class_message(
                    "room1", i // 10, t - 1000 * MS, t + 7, "seven", scores["seven"], payload
                )
            )
    return sorted(msgs, key=lambda m: m.t_ns)


def write_old_format(path: Path, msgs: list[Message]) -> Path:
    """A recording in the layout used before the Foxglove schemas, written with the stock
    mcap writer from its documented rules (streamfuse/record/format.py), not our writer."""
    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile=fmt.PROFILE, library="streamfuse 0.1.0")
        sid = w.register_schema(fmt.SCHEMA_NAME, fmt.SCHEMA_ENCODING, fmt.SCHEMA_TEXT)
        w.add_metadata(
            fmt.METADATA_NAME, {"message_encoding": fmt.MESSAGE_ENCODING, "schema_version": "1"}
        )
        chans: dict[str, int] = {}
        for m in msgs:
            source, _, stream = m.topic.partition("/")
            ch = chans.setdefault(
                m.topic,
                w.register_channel(
                    m.topic, fmt.MESSAGE_ENCODING, sid, {"source": source, "stream": stream}
                ),
            )
            w.add_message(ch, m.t_ns, fmt.frame(codec.encode(m)[1:]), m.t_ns, sequence=m.header.seq)
        w.finish()
    return path


def wire(msgs: list[Message]) -> list[list[bytes]]:
    return [[bytes(p) for p in codec.encode(m)] for m in msgs]


def replay_and_receive(bus_env, path: Path, n: int) -> list[list[bytes]]:
    """``streamfuse replay --max`` of ``path``; the multipart messages a SUB of everything got."""
    got: list[list[bytes]] = []
    with replaying(bus_env, [str(path), "--max"], "", hwm=100_000) as (sub, proc):
        while len(got) < n:
            if sub.poll(100):
                got.append(sub.recv_multipart())
            elif proc.poll() is not None and not sub.poll(1000):
                break
        err = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0, err
    return got


@pytest.mark.slow
def test_a_recorded_replay_replays_the_same_messages(broker, tmp_path: Path) -> None:
    """record (Foxglove layout) -> replay while recording again -> replay both: every message
    (topic, header, payload bytes) identical to the other and to what was published."""
    msgs = every_kind()
    first = tmp_path / "first.mcap"
    with RecordingWriter(first, chunk_size=16 * 1024) as w:
        for m in msgs:
            w.write_message(m)
    with zmq.Context() as ctx:
        probe = Probe(ctx, broker.cfg.bus)
        rec = start_recorder(broker, tmp_path / "second.mcap")
        try:
            probe.wait_subscribers(b"")
            r = run_streamfuse(
                ["replay", str(first), "--max", "--config", str(broker.path)], timeout=60
            )
            assert r.returncode == 0, r.stderr
            second = tmp_path / "second-0000.mcap"
            wait_for(
                lambda: count_raw([second]) >= len(msgs),
                timeout=20,
                what="the recorder to write everything",
            )
        finally:
            assert stop(rec) == 0
            probe.close()
    a = replay_and_receive(broker, first, len(msgs))
    b = replay_and_receive(broker, second, len(msgs))
    assert a == b == wire(msgs)
    assert {codec.decode(p).kind for p in a} == {
        "frame",
        "audio",
        "text",
        "heartbeat",
        "label",
        "class",
    }


@pytest.mark.slow
def test_old_recordings_replay_read_and_convert_to_identical_messages(
    broker, tmp_path: Path
) -> None:
    msgs = every_kind(20)
    old = write_old_format(tmp_path / "old.mcap", msgs)
    # The reader (and so train and eval) reads old files as before.
    assert list(reader.read_messages([old])) == msgs
    r = run_streamfuse(["convert", str(old)], timeout=60)
    assert r.returncode == 0, r.stderr
    new = tmp_path / "old-converted.mcap"
    lines = r.stdout.splitlines()
    assert lines[0] == f"{old} -> {new}: {len(msgs)} messages"
    counts = dict(line.strip().rsplit(": ", 1) for line in lines[1:])
    assert counts["/room1/video foxglove.RawImage"] == "20"
    assert counts["/room2/video foxglove.CompressedImage"] == "20"
    assert counts["/streamfuse/wire/room2/text streamfuse.wire.v1"] == "5"
    assert counts["/class/room1 streamfuse.Classification"] == "2"
    assert list(reader.read_messages([new])) == msgs
    assert (
        replay_and_receive(broker, old, len(msgs))
        == replay_and_receive(broker, new, len(msgs))
        == wire(msgs)
    )
    # Converting again refuses to overwrite; --out takes one input.
    again = run_streamfuse(["convert", str(old)], timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr
    two = run_streamfuse(
        ["convert", str(old), str(new), "--out", str(tmp_path / "x.mcap")], timeout=60
    )
    assert two.returncode == 2


def test_old_and_converted_recordings_train_on_the_same_windows(tmp_path: Path) -> None:
    """The trainer's and the evaluator's reader: an old recording and its conversion give the
    same labelled, featurised windows."""
    import torch

    from streamfuse.config import AlignConfig
    from streamfuse.fusion.features import Preprocessing
    from streamfuse.record.convert import convert_file
    from streamfuse.train.dataset import load_windows

    msgs = every_kind(160)  # 4 s of room1 video and audio, labelled "seven" in stretches
    old = write_old_format(tmp_path / "old.mcap", msgs)
    counts, errors = convert_file(old, tmp_path / "new.mcap")
    assert not errors and sum(counts.values()) == len(msgs)
    align = AlignConfig()
    prep = Preprocessing.from_align(align)
    a = load_windows([old], align, prep)
    b = load_windows([tmp_path / "new.mcap"], align, prep)
    assert len(a) > 0 and a.keys == b.keys and a.classes == b.classes
    assert torch.equal(a.y, b.y)
    for name in ("frames", "logmel", "tokens", "offsets", "mask"):
        assert torch.equal(getattr(a.features, name), getattr(b.features, name)), name


def test_legacy_writer_and_stock_writer_files_read_the_same(tmp_path: Path) -> None:
    msgs = every_kind(8)
    with RecordingWriter(tmp_path / "legacy.mcap", legacy=True) as w:
        for m in msgs:
            w.write_message(m)
    stock = write_old_format(tmp_path / "stock.mcap", msgs)
    raw = [
        [bytes(p) for p in parts] for _t, _ts, parts in reader.read_raw([tmp_path / "legacy.mcap"])
    ]
    assert (
        raw
        == [[bytes(p) for p in parts] for _t, _ts, parts in reader.read_raw([stock])]
        == wire(msgs)
    )
