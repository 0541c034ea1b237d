"""Any valid MCAP layout of a recording reads the same, and damaged chunks are found.

A streamfuse recording is rewritten by the official ``mcap`` writer in every layout its
constructor offers (chunked or not, each compression, with and without message indexes,
summary offsets, statistics, and summary copies of channels and schemas); the reader must
return the same messages from each, or fail loudly, never read an empty recording.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zstandard
from mcap.reader import make_reader
from mcap.writer import CompressionType, IndexType, Writer

from streamfuse.clock import NS_PER_MS as MS
from streamfuse.record import mcapfile, reader
from streamfuse.record.writer import RecordingWriter
from streamfuse.wire import codec
from streamfuse.wire.schema import Message

T0 = 1_700_000_000_000_000_000


def _messages(n: int = 60) -> list[Message]:
    out: list[Message] = []
    for i in range(n):
        t = T0 + i * 40 * MS
        out.append(codec.frame_message("room1", i, t, np.full((16, 16, 3), i, np.uint8)))
        out.append(codec.audio_message("room1", i, t + MS, np.full((320, 1), i, np.float32), 16000))
        if i % 5 == 0:
            out.append(codec.text_message("room1", i // 5, t + 2 * MS, f"line {i}"))
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "original.mcap"
    with RecordingWriter(path, chunk_size=8 * 1024) as w:
        for m in _messages():
            w.write_message(m)
    return path


# (use_chunking, compression): compression only applies to chunks
CHUNKING = [(True, CompressionType.ZSTD), (True, CompressionType.LZ4), (True, CompressionType.NONE),
            (False, CompressionType.NONE)]
ON_OFF = [True, False]
LAYOUTS = list(itertools.product(CHUNKING, ON_OFF, ON_OFF, ON_OFF, ON_OFF))
assert len(LAYOUTS) == 64


def _layout_id(layout: tuple[tuple[bool, CompressionType], bool, bool, bool, bool]) -> str:
    (chunked, compression), indexes, offsets, statistics, repeat = layout
    names = [f"chunked-{compression.name.lower()}" if chunked else "unchunked"]
    names += [n for n, on in [("indexes", indexes), ("offsets", offsets), ("stats", statistics),
                              ("repeat", repeat)] if on]
    return "+".join(names)


def _rewrite(src: Path, dst: Path, chunking: tuple[bool, CompressionType], indexes: bool,
             offsets: bool, statistics: bool, repeat: bool) -> None:
    use_chunking, compression = chunking
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        w = Writer(f_out, chunk_size=4 * 1024, compression=compression, use_chunking=use_chunking,
                   index_types=IndexType.ALL if indexes else IndexType.NONE,
                   repeat_channels=repeat, repeat_schemas=repeat, use_statistics=statistics,
                   use_summary_offsets=offsets)
        r = make_reader(f_in)
        w.start(profile=r.get_header().profile, library="mcap python writer")
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        for schema, channel, message in r.iter_messages(log_time_order=False):
            if schema is not None and schema.id not in schemas:
                schemas[schema.id] = w.register_schema(schema.name, schema.encoding, schema.data)
            if channel.id not in channels:
                channels[channel.id] = w.register_channel(
                    channel.topic, channel.message_encoding, schemas.get(channel.schema_id, 0),
                    dict(channel.metadata))
            w.add_message(channels[channel.id], message.log_time, message.data,
                          message.publish_time, message.sequence)
        w.finish()


def _raw(path: Path) -> list[tuple[str, int, bytes]]:
    """(topic, log_time, the message's bytes after the topic) as read_raw gives them."""
    return [(topic, t, _joined(parts[1:])) for topic, t, parts in reader.read_raw([path])]


def _joined(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def _counts(path: Path) -> dict[tuple[str, str], int]:
    st = reader.inspect_file(path)
    assert not st.errors, st.errors
    return {(t.topic, t.kind): t.messages for t in st.topics}


@pytest.mark.parametrize(("chunking", "indexes", "offsets", "statistics", "repeat"), LAYOUTS,
                         ids=[_layout_id(la) for la in LAYOUTS])
def test_every_official_writer_layout_reads_the_same_messages(
        recording: Path, tmp_path: Path, chunking: tuple[bool, CompressionType], indexes: bool,
        offsets: bool, statistics: bool, repeat: bool) -> None:
    out = tmp_path / "layout.mcap"
    _rewrite(recording, out, chunking, indexes, offsets, statistics, repeat)
    want = _raw(recording)
    assert len(want) == 60 * 2 + 12
    errors: Counter[str] = Counter()
    got_msgs = list(reader.read_messages([out], errors=errors))
    assert not errors
    assert [(m.topic, m.t_ns, _joined(codec.encode(m)[1:])) for m in got_msgs] == want
    assert _raw(out) == want
    assert _counts(out) == _counts(recording)


def _chunk_to_damage(path: Path) -> tuple[int, int, int]:
    """(offset of the second chunk, its message count, offset of a compressed byte whose flip
    still decompresses, to different bytes: only the chunk's CRC can tell)."""
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
        assert summary is not None and len(summary.chunk_indexes) >= 3
        ci = sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)[1]
        assert ci.compression == "zstd"
        raw = path.read_bytes()
        data_start = ci.chunk_start_offset + ci.chunk_length - ci.compressed_size
        data = raw[data_start:data_start + ci.compressed_size]
        original = zstandard.ZstdDecompressor().decompress(data)
        for i in range(len(data) // 2, len(data)):
            flipped = bytearray(data)
            flipped[i] ^= 0x01
            try:
                out = zstandard.ZstdDecompressor().decompress(bytes(flipped))
            except zstandard.ZstdError:
                continue
            if out != original and len(out) == len(original):
                n = 0
                for _s, _c, m in make_reader(f).iter_messages():
                    n += ci.message_start_time <= m.log_time <= ci.message_end_time
                return ci.chunk_start_offset, n, data_start + i
    raise AssertionError("no byte of the chunk flips without breaking zstd")


@pytest.mark.parametrize("summary", [True, False], ids=["indexed", "linear"])
def test_a_flipped_byte_inside_a_chunk_is_caught_by_its_crc(
        recording: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, summary: bool) -> None:
    chunk_offset, n_lost, flip_at = _chunk_to_damage(recording)
    bad = tmp_path / "bad.mcap"
    if summary:
        raw = bytearray(recording.read_bytes())
    else:  # as a killed writer leaves it: the same bytes up to its last finished chunk, no summary
        w = RecordingWriter(bad, chunk_size=8 * 1024)
        for m in _messages():
            w.write_message(m)
        w.abandon()
        raw = bytearray(bad.read_bytes())
        assert raw[:flip_at + 1] == recording.read_bytes()[:flip_at + 1]
    good = tmp_path / "good.mcap"
    good.write_bytes(bytes(raw))
    raw[flip_at] ^= 0x01
    bad.write_bytes(bytes(raw))
    errors: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING, logger="streamfuse.record"):
        got = list(reader.read_messages([bad], errors=errors))
    want = list(reader.read_messages([good]))
    lost = [m for m in want if m not in got]
    assert n_lost > 0 and len(lost) == n_lost and len(got) + n_lost == len(want)
    assert [m for m in want if m in got] == got  # the rest, whole and in order
    assert errors == {"crc": 1, "skipped_messages": n_lost}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(bad) in warnings[0] and f"offset {chunk_offset}" in warnings[0]
    assert "CRC" in warnings[0] and f"skipping its {n_lost} messages" in warnings[0]
    assert reader.inspect_file(bad).errors == {"crc": 1, "skipped_messages": n_lost}


def test_a_file_whose_messages_cannot_be_found_is_an_error_not_an_empty_recording(
        recording: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "layout.mcap"
    _rewrite(recording, out, (True, CompressionType.ZSTD), True, True, True, False)
    # A reader that trusts the summary to list every channel (it lists none here) finds no
    # message to return; it must say so rather than return an empty recording.
    monkeypatch.setattr(reader, "_directs_reading", lambda summary: True)
    with pytest.raises(reader.RecordingError,
                       match=r"layout\.mcap: its summary lists 132 messages"):
        list(reader.read_messages([out]))
    with pytest.raises(reader.RecordingError, match="none could be read"):
        reader.inspect_file(out)


def test_a_damaged_summary_is_not_trusted_to_list_the_chunks(
        recording: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open(recording, "rb") as f:
        summary = make_reader(f).get_summary()
        assert summary is not None
    raw = bytearray(recording.read_bytes())
    # The third chunk's ChunkIndex record: its opcode byte, changed to one no reader knows,
    # so the index parses without that chunk.
    third = sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)[2]
    needle = third.chunk_start_offset.to_bytes(8, "little")
    # opcode, record length, message start and end time come before chunk_start_offset
    at = raw.index(needle, third.chunk_start_offset + third.chunk_length) - 1 - 8 - 8 - 8
    assert raw[at] == 0x08  # ChunkIndex opcode
    raw[at] = 0x7F
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(raw))
    with open(bad, "rb") as f:  # what a reader trusting the summary would miss
        damaged = make_reader(f).get_summary()
        assert damaged is not None and len(damaged.chunk_indexes) == len(summary.chunk_indexes) - 1
    errors: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING, logger="streamfuse.record"):
        got = list(reader.read_messages([bad], errors=errors))
    assert got == list(reader.read_messages([recording]))
    assert errors == {"summary_crc": 1}
    assert [r.getMessage() for r in caplog.records] == [
        f"{bad}: the summary fails its CRC: reading every chunk instead of the index"]


def test_a_chunk_claiming_an_impossible_size_is_counted_not_raised(recording: Path,
                                                                  tmp_path: Path) -> None:
    with open(recording, "rb") as f:
        summary = make_reader(f).get_summary()
        assert summary is not None
    ci = sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)[1]
    raw = bytearray(recording.read_bytes())
    with open(recording, "rb") as f:
        size_at = mcapfile.read_chunk_head(f, ci.chunk_start_offset).data_offset - 8  # u64 size
    assert int.from_bytes(raw[size_at:size_at + 8], "little") == ci.compressed_size
    raw[size_at:size_at + 8] = (2**64 - 1).to_bytes(8, "little")
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(raw))
    errors: Counter[str] = Counter()
    got = list(reader.read_messages([bad], errors=errors))
    assert errors["corrupt"] == 1 and 0 < len(got) < len(list(reader.read_messages([recording])))
