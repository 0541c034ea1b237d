"""Recorder and replay as real processes around a real broker, on real MCAP files."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zmq
from mcap.reader import make_reader

from streamfuse.record import layout, reader
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from tests.helpers.bus import Probe
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for

T0 = 1_700_000_000_000_000_000


def synthetic(n: int, *, source: str = "room1", period_ns: int = 10_000_000, t0: int = T0,
              shape: tuple[int, int] = (48, 64)) -> list[Message]:
    """Video, audio and text messages with distinct content, interleaved in time."""
    msgs: list[Message] = []
    rng = np.random.default_rng(0)
    for i in range(n):
        t = t0 + i * period_ns
        msgs.append(codec.frame_message(source, i, t, rng.integers(0, 255, (*shape, 3), dtype=np.uint8)))
        msgs.append(codec.audio_message(source, i, t - 3_000_000, rng.standard_normal((320, 1)).astype(np.float32),
                                        16000))
        if i % 5 == 0:
            msgs.append(codec.text_message(source, i // 5, t + 1_000_000, f"message {i} é"))
    return msgs


def raw_records(path: Path | list[Path]) -> list[tuple[str, int, list[bytes]]]:
    paths = path if isinstance(path, list) else [path]
    return [(t, ts, [bytes(p) for p in parts]) for t, ts, parts in reader.read_raw(paths)]


def count_raw(paths: list[Path]) -> int:
    try:
        return sum(1 for _ in reader.read_raw(paths))
    except reader.RecordingError:
        return 0


def start_recorder(bus_env, out: Path, *extra: str):
    return streamfuse(["record", "--out", str(out), "--config", str(bus_env.path), *extra])


def record_published(bus_env, probe: Probe, out: Path, prefix: str, msgs: list[Message], what: str) -> Path:
    """Record topics ``prefix`` to ``out`` while ``probe`` publishes ``msgs`` (once the recorder
    has subscribed); the recorder is stopped (exit code 0) when it has written them all.
    Returns the first file of the recording."""
    rec = start_recorder(bus_env, out, "--topics", prefix)
    try:
        probe.wait_subscribers(prefix.encode())
        probe.publish(msgs)
        first = out.with_name(f"{out.stem}-0000.mcap")
        wait_for(lambda: count_raw([first]) >= len(msgs), timeout=20, what=what)
    finally:
        assert stop(rec) == 0
    return first


@pytest.mark.slow
def test_record_replay_record_is_byte_identical(broker, tmp_path: Path) -> None:
    """synthetic capture -> record -> replay --max -> record again: same bytes, same t_ns
    (test_record_capture.py does the same with real capture processes)."""
    msgs = synthetic(150)
    with zmq.Context() as ctx:
        probe = Probe(ctx, broker.cfg.bus)
        first = record_published(broker, probe, tmp_path / "a.mcap", "room1/", msgs, "recorder 1 to write everything")
        rec2 = start_recorder(broker, tmp_path / "b.mcap")
        try:
            probe.wait_subscribers(b"")
            r = run_streamfuse(["replay", str(first), "--max", "--config", str(broker.path)], timeout=60)
            assert r.returncode == 0, r.stderr
            second = tmp_path / "b-0000.mcap"
            wait_for(lambda: count_raw([second]) >= len(msgs), timeout=20, what="recorder 2 to write everything")
        finally:
            assert stop(rec2) == 0
        probe.close()
    a, b = raw_records(first), raw_records(second)
    assert len(a) == len(msgs)
    assert a == b
    # ... and they are the messages that were published, in t_ns order.
    want = sorted(msgs, key=lambda m: m.t_ns)
    assert [codec.decode(parts) for _t, _ts, parts in a] == want
    assert [ts for _t, ts, _p in a] == [m.t_ns for m in want]
    # A finished file has a summary and index (the recorder was stopped with SIGTERM).
    with open(first, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and summary.chunk_indexes


def test_independent_reader_lists_topics_and_counts(tmp_path: Path) -> None:
    """The mcap package's own reader and protobuf decoders built from the file's schemas (no
    streamfuse code) see the channels, counts and times."""
    from mcap_protobuf.decoder import DecoderFactory

    from streamfuse.record.writer import RecordingWriter

    msgs = synthetic(50, source="cam2")
    path = tmp_path / "x.mcap"
    with RecordingWriter(path, chunk_size=32 * 1024) as w:
        for m in msgs:
            w.write_message(m)
    counts: Counter[str] = Counter()
    with open(path, "rb") as f:
        r = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = r.get_summary()
        assert summary is not None and summary.statistics is not None
        by_id = {c.id: c.topic for c in summary.channels.values()}
        stat_counts = {by_id[k]: v for k, v in summary.statistics.channel_message_counts.items()}
        for schema, channel, message, decoded in r.iter_decoded_messages():
            assert message.log_time == message.publish_time
            assert decoded.timestamp.ToNanoseconds() == message.log_time
            assert decoded.DESCRIPTOR.full_name == schema.name
            counts[channel.topic] += 1
    want = Counter("/" + m.topic for m in msgs)
    assert counts == want == stat_counts
    assert set(want) == {"/cam2/video", "/cam2/audio", "/cam2/text"}


@pytest.mark.slow
def test_sigkill_loses_at_most_the_last_chunk(broker, tmp_path: Path) -> None:
    """SIGKILL mid-run: the stock mcap reader opens the file; it holds a time-ordered
    prefix of what was sent, short of at most one chunk."""
    chunk_kb = 64
    broker.write(f"[record]\nchunk_kb = {chunk_kb}\n")
    msgs = synthetic(400)  # ~9.5 KB video + 1.3 KB audio per step: ~66 chunks
    per_chunk = chunk_kb * 1024 // 1300 + 1  # an upper bound on messages in one chunk
    with zmq.Context() as ctx:
        probe = Probe(ctx, broker.cfg.bus)
        rec = start_recorder(broker, tmp_path / "k.mcap")
        path = tmp_path / "k-0000.mcap"
        try:
            probe.wait_subscribers(b"")
            probe.publish(msgs)
            wait_for(lambda: count_raw([path]) >= len(msgs) - per_chunk, timeout=20,
                     what="the recorder to write all but the last chunk")
        finally:
            rec.send_signal(signal.SIGKILL)
            rec.wait(10)
            probe.close()
    assert rec.returncode == -signal.SIGKILL
    with open(path, "rb") as f:  # the stock reader, no streamfuse code
        got = [(c, m.log_time, m.data)
               for _s, c, m in make_reader(f).iter_messages(log_time_order=False)]
    assert len(got) >= len(msgs) - per_chunk
    sent = {(m.topic, m.t_ns): m for m in msgs}
    for channel, t, data in got:  # every message there is complete and exact
        topic, lay = reader.wire_route(channel)
        assert codec.decode([topic.encode(), *layout.decode(lay, data)]) == sent[(topic, t)]
    errors: Counter[str] = Counter()
    ours = list(reader.read_messages([path], errors=errors))
    assert len(ours) == len(got) and not errors
    assert [m.t_ns for m in ours] == sorted(m.t_ns for m in ours)


def test_record_unwritable_path_and_failing_disk_are_clear_errors(broker, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("not a directory")
    r = run_streamfuse(["record", "--out", str(tmp_path / "file.txt" / "x.mcap"), "--duration", "1",
                        "--config", str(broker.path)], timeout=30)
    assert r.returncode == 1, r.stderr
    assert "streamfuse record: cannot write" in r.stderr and "Traceback" not in r.stderr
    # The disk refuses writes mid-run (a file size limit: EFBIG, like ENOSPC, from write()).
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    broker.write("[record]\nchunk_kb = 64\n")
    with zmq.Context() as ctx:
        probe = Probe(ctx, broker.cfg.bus)
        rec = streamfuse(["record", "--out", str(tmp_path / "full.mcap"), "--config", str(broker.path)],
                         preexec_fn=limit, stderr=subprocess.PIPE, text=True)
        try:
            probe.wait_subscribers(b"")
            probe.publish(synthetic(100))  # ~1 MB
            assert rec.wait(20) == 1
            err = rec.stderr.read() if rec.stderr else ""
        finally:
            stop(rec)
            if rec.stderr:
                rec.stderr.close()
            probe.close()
    assert "streamfuse record: cannot write" in err and "File too large" in err and "Traceback" not in err, err
    # What was written before the failure is readable, by the stock reader too.
    errors: Counter[str] = Counter()
    ours = list(reader.read_messages([tmp_path / "full-0000.mcap"], errors=errors))
    assert ours and not errors
    with open(tmp_path / "full-0000.mcap", "rb") as f:
        assert sum(1 for _ in make_reader(f).iter_messages()) == len(ours)
    # The bus is unaffected.
    from streamfuse.wire.sockets import connect_sub

    with zmq.Context() as ctx:
        probe = Probe(ctx, broker.cfg.bus)
        sub = connect_sub(ctx, broker.cfg.bus, ["room1/"])
        try:
            probe.wait_subscribers(b"room1/")
            probe.publish(synthetic(1))
            assert sub.poll(5000)
        finally:
            sub.close()
            probe.close()


def test_recorder_rotates_into_numbered_complete_files(broker, tmp_path: Path) -> None:
    broker.write("[record]\nmax_size_mb = 0.1\nchunk_kb = 32\n")
    msgs = synthetic(120)  # ~1.3 MB
    with zmq.Context() as ctx:
        probe = Probe(ctx, broker.cfg.bus)
        rec = start_recorder(broker, tmp_path / "rot.mcap")
        try:
            probe.wait_subscribers(b"")
            probe.publish(msgs)
            wait_for(lambda: count_raw(sorted(tmp_path.glob("rot-*.mcap"))) >= len(msgs), timeout=20,
                     what="every message in some file")
        finally:
            assert stop(rec) == 0
            probe.close()
    files = sorted(tmp_path.glob("rot-*.mcap"))
    assert len(files) >= 5 and [f.name for f in files] == [f"rot-{i:04d}.mcap" for i in range(len(files))]
    for f in files:  # each file was finished: summary and index
        with open(f, "rb") as fh:
            assert make_reader(fh).get_summary() is not None
        assert f.stat().st_size < 0.1 * 1024 * 1024 + 64 * 1024  # the limit, overshot by at most a chunk
    got = list(reader.read_messages(files))
    assert got == sorted(msgs, key=lambda m: m.t_ns)
