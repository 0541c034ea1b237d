"""Recording format, writer, reader and replay core on real MCAP files (no sockets)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from streamfuse.clock import NS_PER_MS as MS
from streamfuse.record import format as fmt
from streamfuse.record import reader, replay
from streamfuse.record.writer import LevelPolicy, RecordingWriter, Rotation, numbered_path
from streamfuse.wire import codec
from streamfuse.wire.schema import Message

T0 = 1_700_000_000_000_000_000


def sample(n: int, source: str = "room1", t0: int = T0, step_ms: int = 10) -> list[Message]:
    out: list[Message] = []
    for i in range(n):
        t = t0 + i * step_ms * MS
        out.append(codec.frame_message(source, i, t, np.full((24, 32, 3), i % 256, np.uint8)))
        out.append(codec.audio_message(source, i, t - 4 * MS, np.full((160, 1), i, np.float32), 16000))
        if i % 4 == 0:
            out.append(codec.text_message(source, i // 4, t + MS, f"t{i}"))
    return out


def write(path: Path, msgs: list[Message], chunk_size: int = 16 * 1024, close: bool = True) -> RecordingWriter:
    w = RecordingWriter(path, chunk_size=chunk_size)
    for m in msgs:
        w.write_message(m)
    if close:
        w.close()
    return w


def by_time(msgs: list[Message]) -> list[Message]:
    return sorted(msgs, key=lambda m: m.t_ns)  # stable: ties keep write order


def test_framing_round_trip_and_errors() -> None:
    parts = [b"\x81\xa1v\x01", b"", b"x" * 1000]
    data = fmt.frame(parts)
    assert [bytes(p) for p in fmt.unframe(data)] == parts
    with pytest.raises(fmt.FramingError):
        fmt.unframe(data[:-1])
    with pytest.raises(fmt.FramingError):
        fmt.unframe(b"")
    with pytest.raises(fmt.FramingError):
        fmt.unframe(data + b"\x01\x00")


def test_write_then_read_in_time_order(tmp_path: Path) -> None:
    msgs = sample(100)
    write(tmp_path / "a.mcap", msgs)
    errors: Counter[str] = Counter()
    got = list(reader.read_messages([tmp_path / "a.mcap"], errors=errors))
    assert got == by_time(msgs) and not errors
    # raw parts are the exact wire bytes
    raw = list(reader.read_raw([tmp_path / "a.mcap"]))
    enc = {(m.topic, m.t_ns): [bytes(p) for p in codec.encode(m)] for m in msgs}
    assert all([bytes(p) for p in parts] == enc[(topic, t)] for topic, t, parts in raw)


def test_invented_topics_are_all_recorded_while_the_spec_cache_stays_bounded(
        tmp_path: Path) -> None:
    """A publisher may invent a source name per message: the recording keeps every one,
    and the channel-spec cache (a process lives for months) stays bounded."""
    from streamfuse.record import layout

    n = 3000
    msgs = [codec.text_message(f"inv-{i}", 0, T0 + i * MS, f"m{i}") for i in range(n)]
    msgs += [codec.text_message("inv-0", 1, T0 + n * MS, "again")]  # its spec was evicted
    write(tmp_path / "a.mcap", msgs, chunk_size=1 << 20)
    assert layout.channel_spec.cache_info().currsize <= 1024
    got = list(reader.read_messages([tmp_path / "a.mcap"]))
    assert got == by_time(msgs)
    with open(tmp_path / "a.mcap", "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and len(summary.channels) == n


def test_a_header_naming_a_source_no_topic_can_name_is_refused_and_cached_nowhere(
        tmp_path: Path) -> None:
    """A header whose source is longer than any name (64 characters) is malformed: the
    recorder refuses it (the caller counts it) before any cache keyed by the source sees
    it, and records what comes next."""
    from streamfuse.record import layout

    header = msgspec.msgpack.encode({"kind": "text", "v": 1, "source": "r" * 100_000,
                                     "stream": "text", "seq": 0, "t_ns": T0})
    with pytest.raises(msgspec.ValidationError):
        layout.read_info(header)
    before = layout._fixed_fields.cache_info().currsize
    w = RecordingWriter(tmp_path / "a.mcap")
    with pytest.raises(codec.DecodeError) as e:
        w.write([b"room1/text", header, b"hi"])
    assert e.value.reason == "header"
    ok = codec.text_message("room1", 1, T0 + MS, "fine")
    w.write_message(ok)
    w.close()
    assert layout._fixed_fields.cache_info().currsize <= before + 1  # room1's alone
    assert list(reader.read_messages([tmp_path / "a.mcap"])) == [ok]


def test_files_and_directories_merge_in_time_order(tmp_path: Path) -> None:
    a, b = sample(60, "cam1"), sample(60, "cam2", t0=T0 + 3 * MS)
    d = tmp_path / "d"
    d.mkdir()
    write(d / "b.mcap", b)
    write(d / "a.mcap", a)
    (d / "notes.txt").write_text("ignored")
    assert reader.expand_paths([d]) == [d / "a.mcap", d / "b.mcap"]
    got = list(reader.read_messages([d]))
    assert [m.t_ns for m in got] == sorted(m.t_ns for m in a + b)
    assert Counter(m.topic for m in got) == Counter(m.topic for m in a + b)
    with pytest.raises(reader.RecordingError, match="no such file"):
        reader.expand_paths([tmp_path / "missing.mcap"])


def test_the_name_given_to_record_means_every_part_it_wrote(tmp_path: Path) -> None:
    """``record --out day1.mcap`` writes ``day1-0000.mcap``, ``day1-0001.mcap``, ...: the name
    the user gave reads them all back, in order, and nothing else that shares the prefix."""
    msgs = sample(300)
    cut = T0 + 150 * 10 * MS
    write(tmp_path / "day1-0001.mcap", [m for m in msgs if m.t_ns >= cut])
    write(tmp_path / "day1-0000.mcap", [m for m in msgs if m.t_ns < cut])
    write(tmp_path / "day1-extra.mcap", sample(10, "cam9"))
    write(tmp_path / "day10-0000.mcap", sample(10, "cam8"))
    parts = [tmp_path / "day1-0000.mcap", tmp_path / "day1-0001.mcap"]
    assert reader.expand_paths([tmp_path / "day1.mcap"]) == parts
    assert list(reader.read_messages([tmp_path / "day1.mcap"])) == by_time(msgs)
    # A file of exactly that name is that file alone.
    write(tmp_path / "day1.mcap", sample(10, "cam7"))
    assert reader.expand_paths([tmp_path / "day1.mcap"]) == [tmp_path / "day1.mcap"]
    with pytest.raises(reader.RecordingError, match=r"day2\.mcap: no such file .*day2-0000\.mcap"):
        reader.expand_paths([tmp_path / "day2.mcap"])
    # Parts in their numbers' order, also past 9999 (where names stop sorting by number).
    long = tmp_path / "long"
    long.mkdir()
    for n in ("10000", "9999", "0000"):
        (long / f"run-{n}.mcap").touch()
    assert [p.name for p in reader.recording_parts(long / "run.mcap")] == [
        "run-0000.mcap", "run-9999.mcap", "run-10000.mcap"]


def test_files_holding_one_topic_at_the_same_times_are_refused(tmp_path: Path) -> None:
    msgs = sample(300)  # 3 s of room1
    cut = T0 + 150 * 10 * MS
    # One recording cut in two (as the writer rotates it): accepted, and reads back whole.
    write(tmp_path / "part-000.mcap", [m for m in msgs if m.t_ns < cut], chunk_size=4096)
    write(tmp_path / "part-001.mcap", [m for m in msgs if m.t_ns >= cut], chunk_size=4096)
    parts = [tmp_path / "part-000.mcap", tmp_path / "part-001.mcap"]
    reader.check_disjoint(parts)
    assert list(reader.read_messages(parts)) == by_time(msgs)
    # A late message of one topic at the head of the next file (written in arrival order) spans
    # that chunk back over the previous file's other topics: still accepted, since each topic's
    # own messages (the chunks' message indexes) follow on from the previous file.
    late = codec.text_message("room1", 99, T0 + 200 * MS, "late")  # 1.3 s before the cut
    write(tmp_path / "late-001.mcap", [late, *[m for m in msgs if m.t_ns >= cut]], chunk_size=1 << 20)
    only_text_early = [m for m in msgs if m.t_ns < cut and m.topic != "room1/text"]
    write(tmp_path / "late-000.mcap", only_text_early, chunk_size=4096)
    reader.check_disjoint([tmp_path / "late-000.mcap", tmp_path / "late-001.mcap"])
    # Another source at the same times: accepted.
    write(tmp_path / "other.mcap", sample(300, "room2"))
    reader.check_disjoint([*parts, tmp_path / "other.mcap"])
    # room1 again over the same seconds (another data set built on the same clock): refused,
    # naming both files and the topic.
    write(tmp_path / "again.mcap", sample(300, t0=T0 + 500 * MS))
    with pytest.raises(reader.RecordingError, match=r"part-00[01]\.mcap and .*again\.mcap both hold room1/"):
        reader.check_disjoint([*parts, tmp_path / "again.mcap"])
    # The same file twice (a directory and a file inside it).
    with pytest.raises(reader.RecordingError, match="given twice"):
        reader.check_disjoint(reader.expand_paths([tmp_path / "part-000.mcap", tmp_path]))
    # The trainer's and the evaluator's reader refuses them before reading anything.
    from streamfuse.config import AlignConfig
    from streamfuse.fusion.features import Preprocessing
    from streamfuse.train.dataset import DataError, load_windows

    align = AlignConfig()
    with pytest.raises(DataError, match="both hold room1/"):
        load_windows([*parts, tmp_path / "again.mcap"], align, Preprocessing.from_align(align))


def test_topic_and_time_filters_read_only_needed_chunks(tmp_path: Path, monkeypatch) -> None:
    msgs = sample(400)
    write(tmp_path / "a.mcap", msgs, chunk_size=8 * 1024)
    reads: Counter[str] = Counter()
    orig = reader._load

    def counting(f, rec):  # type: ignore[no-untyped-def]
        reads["chunks"] += 1
        return orig(f, rec)

    monkeypatch.setattr(reader, "_load", counting)
    total = len(list(reader.read_messages([tmp_path / "a.mcap"])))
    all_chunks = reads["chunks"]
    reads.clear()
    start, end = T0 + 1000 * MS, T0 + 1500 * MS
    got = list(reader.read_messages([tmp_path / "a.mcap"], topics=["room1/vid"], start_ns=start, end_ns=end))
    want = [m for m in by_time(msgs) if m.topic == "room1/video" and start <= m.t_ns < end]
    assert got == want and len(got) == 50
    assert total == len(msgs)
    assert reads["chunks"] < all_chunks / 4  # only the chunks covering the window


def test_killed_writer_leaves_a_file_the_stock_reader_opens(tmp_path: Path) -> None:
    # The last message (far smaller than a chunk) leaves a chunk unfinished, whatever the sizes.
    msgs = [*sample(300), codec.text_message("room1", 99, T0 + 10 * 1000 * MS, "unfinished")]
    w = write(tmp_path / "k.mcap", msgs, close=False)
    w.abandon()  # as if the process died: no summary, the unfinished chunk is lost
    with open(tmp_path / "k.mcap", "rb") as f:
        stock = list(make_reader(f).iter_messages())
    assert 0 < len(stock) < len(msgs)
    errors: Counter[str] = Counter()
    got = list(reader.read_messages([tmp_path / "k.mcap"], errors=errors))
    assert not errors
    assert got == by_time(msgs[:len(got)]) and len(got) == len(stock)
    assert len(msgs) - len(got) <= 16 * 1024 // 100  # at most one chunk's worth


def test_truncated_file_yields_the_readable_prefix(tmp_path: Path) -> None:
    msgs = sample(300)
    write(tmp_path / "a.mcap", msgs)
    data = (tmp_path / "a.mcap").read_bytes()
    (tmp_path / "t.mcap").write_bytes(data[: len(data) // 2])
    errors: Counter[str] = Counter()
    got = list(reader.read_messages([tmp_path / "t.mcap"], errors=errors))
    assert errors == {"truncated": 1}
    assert 0 < len(got) < len(msgs)
    assert got == by_time(msgs[: len(got)])  # the chunks before the cut, whole
    st = reader.inspect_file(tmp_path / "t.mcap")
    assert not st.complete and st.errors == {"truncated": 1}


def test_not_mcap_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "x.mcap"
    p.write_bytes(b"RIFF....WAVEfmt " + bytes(100))
    with pytest.raises(reader.RecordingError, match="not an MCAP file"):
        list(reader.read_messages([p]))
    p.write_bytes(b"")
    with pytest.raises(reader.RecordingError, match="not an MCAP file"):
        list(reader.read_raw([p]))


@pytest.mark.parametrize("chunked", [True, False])
def test_foreign_mcap_counts_what_is_not_ours(tmp_path: Path, chunked: bool) -> None:
    """An MCAP from another program (JSON channel), holding also a few streamfuse records."""
    p = tmp_path / "foreign.mcap"
    ours = sample(5)
    with open(p, "wb") as f:
        w = Writer(f, use_chunking=chunked)
        w.start(profile="", library="someone-else")
        js = w.register_schema("pose", "jsonschema", b'{"type": "object"}')
        cj = w.register_channel("/pose", "json", js)
        sf = w.register_schema(fmt.SCHEMA_NAME, fmt.SCHEMA_ENCODING, fmt.SCHEMA_TEXT)
        chans: dict[str, int] = {}
        for i, m in enumerate(ours):
            w.add_message(cj, T0 + i, json.dumps({"x": i}).encode(), T0 + i)
            ch = chans.setdefault(m.topic, w.register_channel(m.topic, fmt.MESSAGE_ENCODING, sf))
            w.add_message(ch, m.t_ns, fmt.frame(codec.encode(m)[1:]), m.t_ns)
        bad = w.register_channel("room1/video", fmt.MESSAGE_ENCODING, sf)
        w.add_message(bad, T0, b"\x01\x00", T0)  # broken framing
        w.add_message(bad, T0, fmt.frame([b"\xc1", b""]), T0)  # not MessagePack
        w.finish()
    errors: Counter[str] = Counter()
    got = list(reader.read_messages([p], errors=errors))
    assert got == by_time(ours)
    assert errors == {"encoding": len(ours), "framing": 1, "header": 1}


def test_stock_reader_validates_crcs_and_caller_may_reuse_buffers(tmp_path: Path) -> None:
    frame = np.zeros((24, 32, 3), np.uint8)
    msgs = []
    with RecordingWriter(tmp_path / "a.mcap", chunk_size=8 * 1024) as w:
        for i in range(50):
            frame[:] = i  # one buffer, reused for every frame like a capture loop
            m = codec.frame_message("room1", i, T0 + i * MS, frame)
            w.write_message(m)
            msgs.append(codec.frame_message("room1", i, T0 + i * MS, frame.copy()))
    with open(tmp_path / "a.mcap", "rb") as f:
        got = [m.data for _s, _c, m in make_reader(f, validate_crcs=True).iter_messages()]
    assert len(got) == 50
    assert list(reader.read_messages([tmp_path / "a.mcap"])) == msgs


def test_compression_level_gives_way_under_backlog() -> None:
    p = LevelPolicy(high=100, low=10, calm_ns=50, settle_ns=2)
    assert p.update(50, 0) == 3
    assert p.update(101, 1) == 1
    assert p.update(101, 2) == 1  # the new level has not had time to show its effect
    assert p.update(101, 3) == -1 and p.update(500, 5) == -5 and p.update(500, 7) is None
    assert p.update(500, 9) is None  # nothing faster than storing uncompressed
    assert p.update(5, 10) is None and p.update(5, 59) is None  # calm, but not for long enough
    assert p.update(5, 60) == -5
    assert p.update(20, 70) == -5 and p.update(5, 80) == -5 and p.update(5, 130) == -1


def test_uncompressed_chunks_mix_with_compressed_ones(tmp_path: Path) -> None:
    msgs = sample(100)
    with RecordingWriter(tmp_path / "a.mcap", chunk_size=4 * 1024) as w:
        for i, m in enumerate(msgs):
            w.zstd_level = None if (i // 40) % 2 else 1
            w.write_message(m)
    with open(tmp_path / "a.mcap", "rb") as f:
        summary = make_reader(f, validate_crcs=True).get_summary()
        assert summary is not None and {c.compression for c in summary.chunk_indexes} == {"", "zstd"}
        assert sum(1 for _ in make_reader(f, validate_crcs=True).iter_messages()) == len(msgs)
    assert list(reader.read_messages([tmp_path / "a.mcap"])) == by_time(msgs)


def test_rotation_and_numbering() -> None:
    r = Rotation(max_bytes=1000, max_duration_ns=10)
    assert not r.due(999, 0, 9) and r.due(1000, 0, 9) and r.due(0, 0, 10)
    assert numbered_path("/x/rec.mcap", 3) == Path("/x/rec-0003.mcap")
    assert numbered_path("/x/dir", 0, stamp="S") == Path("/x/dir/rec-S-0000.mcap")


def test_writer_rejects_what_it_cannot_file(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "a.mcap") as w:
        for parts, reason in [([b"room1/video"], "parts"), ([b"\xff", b"\x80"], "topic"),
                              ([b"Room 1/x", b"\x80"], "topic"), ([b"room1/text", b"\xc1"], "header")]:
            with pytest.raises(codec.DecodeError) as e:
                w.write(parts)
            assert e.value.reason == reason
        assert w.write([b"room1/text", b"\x80"], t_ns=5) > 0  # explicit time: filed as is


def test_restamp_header_shifts_absolute_times_only() -> None:
    m = codec.class_message("room1", 3, T0, T0 + 1000, "seven", 0.9, b"{}")
    h = codec.encode(m)[1]
    out = msgspec.msgpack.decode(replay.restamp_header(h, 5))
    assert out["t_ns"] == T0 + 1005 and out["t_start_ns"] == T0 + 5
    assert out["seq"] == 3 and out["label"] == "seven" and out["kind"] == "class"
    assert list(out) == list(msgspec.msgpack.decode(h))  # same fields, same order


class FakeClock:
    def __init__(self) -> None:
        self.t = 10**18

    def now(self) -> int:
        return self.t

    def sleep_until(self, deadline: int) -> None:
        self.t = max(self.t, deadline)


def test_replay_paces_filters_loops_and_restamps(tmp_path: Path) -> None:
    msgs = sample(100)  # 1 s of recording
    write(tmp_path / "a.mcap", msgs)
    clk = FakeClock()
    sent: list[tuple[int, list[bytes]]] = []

    def send(parts: list) -> bool:
        sent.append((clk.now(), [bytes(p) for p in parts]))
        return True

    plan = replay.Plan([tmp_path / "a.mcap"], rate=2.0, start_s=0.2, end_s=0.6, topics=["room1/video"])
    st = replay.run(plan, send, stop=threading.Event(), now_ns=clk.now, sleep_until=clk.sleep_until)
    first = min(m.t_ns for m in msgs)
    want = [m for m in by_time(msgs) if m.topic == "room1/video" and first + 200 * MS <= m.t_ns < first + 600 * MS]
    assert st.messages == len(want) == 40
    assert [p for _w, p in sent] == [[bytes(x) for x in codec.encode(m)] for m in want]  # byte for byte
    wall0 = 10**18
    assert [w - wall0 for w, _p in sent] == [(m.t_ns - first - 200 * MS) // 2 for m in want]
    # --loop --restamp --max: times keep increasing across passes, start at "now".
    sent.clear()
    stop = threading.Event()

    def send_until(parts: list) -> bool:
        sent.append((clk.now(), [bytes(p) for p in parts]))
        if len(sent) == 2 * len(msgs) + 3:
            stop.set()
        return True

    plan = replay.Plan([tmp_path / "a.mcap"], rate=None, loop=True, restamp=True)
    now0 = clk.now()
    st = replay.run(plan, send_until, stop=stop, now_ns=clk.now, sleep_until=clk.sleep_until)
    assert st.loops == 3
    times = [codec.decode([p[0], *p[1:]]).t_ns for _w, p in sent]
    assert times[0] == now0 and times == sorted(times)
    assert len(set(times)) > len(msgs)


def test_times_no_decoder_accepts_do_not_set_the_replay_pace(tmp_path: Path) -> None:
    """The recorder files what it cannot decode (any publisher may send ``t_ns = 1`` or
    ``2**64 - 1``), and another program's channel has times of its own: replay skips them
    and counts them, and they must not set its pace (it would wait 54 years before the
    first message, or 500 before a loop's second pass) nor overflow a restamped header."""
    def hostile(t_ns: int) -> list[bytes]:
        return [b"evil/text", msgspec.msgpack.encode(
            {"v": 1, "kind": "text", "source": "evil", "stream": "text", "seq": 0, "t_ns": t_ns}),
            b"x"]

    msgs = [codec.text_message("room1", i, T0 + i * 10 * MS, f"m{i}") for i in range(5)]
    with RecordingWriter(tmp_path / "a.mcap") as w:
        w.write(hostile(1))
        for m in msgs:
            w.write_message(m)
        w.write(hostile((1 << 64) - 1))
    with open(tmp_path / "b.mcap", "wb") as f:  # another program's channel, at log_time 0
        other = Writer(f)
        other.start(profile="", library="someone-else")
        ch = other.register_channel("/pose", "json", other.register_schema("pose", "jsonschema", b"{}"))
        other.add_message(ch, 0, b'{"x": 0}', 0)
        other.add_message(ch, (1 << 64) - 1, b'{"x": 1}', (1 << 64) - 1)
        other.finish()
    for paths in ([tmp_path / "a.mcap"], [tmp_path / "a.mcap", tmp_path / "b.mcap"]):
        st, sent = _replay_twice(paths, len(msgs))
        assert st.messages == 2 * len(msgs) and st.errors["time"] == 3, st.errors  # 2 + 1
        # The first pass keeps the recorded spacing from the first message on; the second
        # follows it after one mean gap (10 ms), its times restamped on from there.
        period = 40 * MS + 1
        want = [i * 10 * MS for i in range(5)] + [period + period // 5 + i * 10 * MS for i in range(5)]
        assert [w for w, _t in sent] == want
        assert [t - sent[0][1] for _w, t in sent] == want


def _replay_twice(paths: list[Path], n: int) -> tuple[replay.Stats, list[tuple[int, int]]]:
    """Two passes of ``replay --loop --restamp`` at rate 1: (wall offset, t_ns) per message."""
    clk = FakeClock()
    wall0 = clk.now()
    sent: list[tuple[int, int]] = []
    stop = threading.Event()

    def send(parts: list) -> bool:
        sent.append((clk.now() - wall0, codec.decode(parts).t_ns))
        if len(sent) == 2 * n:
            stop.set()
        return True

    st = replay.run(replay.Plan(paths, rate=1.0, loop=True, restamp=True), send, stop=stop,
                    now_ns=clk.now, sleep_until=clk.sleep_until)
    return st, sent
