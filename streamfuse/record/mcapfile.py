"""A chunked MCAP file writer built for throughput and crash safety.

Records are serialized by the ``mcap`` package's record classes; this module
only assembles them. Why not ``mcap.writer.Writer``: it copies each message
into a ``BytesIO`` and again out of it, compresses with a fixed zstd level
and buffers the file in user space, so a SIGKILL can lose finished chunks.
Here a chunk is a list of buffers joined once, compressed once (zstd frame
with its content size, like the stock writer) and written, with its message
indexes and a provisional ``DataEnd`` + ``Footer`` + magic (the *seal*) after
them, in one ``pwritev`` call (one per ``IOV_MAX`` buffers for a chunk of more
channels than that); the next chunk overwrites the seal. So the file on disk is
a valid, summary-less MCAP holding every finished chunk, except while the kernel
is inside that call (a SIGKILL landing there can leave a partial chunk: readers
then recover everything before it, see
:mod:`streamfuse.record.reader`).
:meth:`McapFile.finish` writes the summary (schemas, channels, statistics,
chunk and metadata indexes, summary offsets) like the stock writer.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard
from mcap.data_stream import RecordBuilder
from mcap.opcode import Opcode
from mcap.records import (
    Channel,
    ChunkIndex,
    DataEnd,
    Footer,
    Header,
    MessageIndex,
    Metadata,
    MetadataIndex,
    Schema,
    Statistics,
    SummaryOffset,
)
from mcap.writer import MCAP0_MAGIC

try:
    # The same CRC-32 as zlib's, with SIMD: ~5x faster on a chunk (it is computed for every
    # chunk written and verified for every chunk read).
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; a build without it still works
    from zlib import crc32

from streamfuse.wire.codec import Buffer

# The binary layout of the records this package reads and writes by hand (the MCAP
# specification's field order, little-endian); the reader and the writer share these.
RECORD_HEADER = struct.Struct("<BQ")  # opcode, length of the body that follows
MESSAGE_FIXED = struct.Struct("<HIQQ")  # channel, sequence, log_time, publish_time; then data
# start, end, uncompressed size, uncompressed CRC, len(compression);
# then the compression name, a u64 size and the (compressed) records
CHUNK_FIXED = struct.Struct("<QQQII")
_U64 = struct.Struct("<Q")
# opcode, length (20), summary start, summary offset start; then the summary CRC (u32), which
# covers the summary section and these fields of the footer
FOOTER_HEAD = struct.Struct("<BQQQ")
_U32 = struct.Struct("<I")
_MSG_HEAD = struct.Struct("<" + RECORD_HEADER.format[1:] + MESSAGE_FIXED.format[1:])
_MSG_FIXED = MESSAGE_FIXED.size
_CHUNK_HEAD = struct.Struct("<" + RECORD_HEADER.format[1:] + CHUNK_FIXED.format[1:])


@dataclass(frozen=True)
class ChunkHead:
    """The fields of a Chunk record before its data; ``data_offset`` is where the
    (compressed) records start in the file, ``data_size`` how many bytes they take."""

    start: int
    end: int
    uncompressed_size: int
    uncompressed_crc: int  # 0: the writer did not compute one
    compression: str  # "" = stored uncompressed
    data_offset: int
    data_size: int


def summary_crc_ok(f: BinaryIO, size: int) -> bool:
    """Whether the summary section of the ``size``-byte file ``f`` matches the CRC in its
    footer; True when there is no summary or its writer stored no CRC (0)."""
    footer = size - len(MCAP0_MAGIC) - FOOTER_HEAD.size - _U32.size
    if footer < 0:
        return True
    f.seek(footer)
    opcode, _length, start, _offsets = FOOTER_HEAD.unpack(f.read(FOOTER_HEAD.size))
    (stored,) = _U32.unpack(f.read(_U32.size))
    if opcode != Opcode.FOOTER or start == 0 or stored == 0 or start > footer:
        return True
    f.seek(start)
    return crc32(f.read(footer + FOOTER_HEAD.size - start)) == stored


def read_chunk_head(f: BinaryIO, offset: int) -> ChunkHead:
    """Read the head of the Chunk record at ``offset`` (its opcode byte). Raises
    ``struct.error`` or ``UnicodeDecodeError`` on bytes that cannot be one."""
    f.seek(offset + RECORD_HEADER.size)
    start, end, size, crc, n = CHUNK_FIXED.unpack(f.read(CHUNK_FIXED.size))
    compression = f.read(n).decode("utf-8")
    (n_data,) = _U64.unpack(f.read(_U64.size))
    data_offset = offset + RECORD_HEADER.size + CHUNK_FIXED.size + n + _U64.size
    return ChunkHead(start, end, size, crc, compression, data_offset, n_data)


def _record(rec: object) -> bytes:
    b = RecordBuilder()
    rec.write(b)  # type: ignore[attr-defined]
    return b.end()


# Buffers one pwritev call may take (Linux: 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
_SEAL = _record(DataEnd(0)) + _record(Footer(0, 0, 0)) + MCAP0_MAGIC


class _File:
    """Unbuffered positional writes: what ``write`` returned is in the kernel, so
    a SIGKILL loses nothing already written."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = 0

    def write(self, *bufs: Buffer, seal: bool = False) -> int:
        """Write ``bufs`` at the logical end (and, with ``seal``, the provisional
        ending after them) in one ``pwritev`` call where the kernel takes it all,
        so the file is rarely caught between two valid states. Returns the offset."""
        start = self.pos
        views = [memoryview(b).cast("B") for b in bufs]
        size = sum(len(v) for v in views)
        if seal:
            views.append(memoryview(_SEAL))
        done = i = 0
        try:
            while i < len(views):
                # At most IOV_MAX buffers a call (a chunk's message indexes are one buffer
                # per channel: a chunk of 3,000 topics would be refused with EINVAL).
                n = os.pwritev(self.fd, views[i:i + _IOV_MAX], start + done)
                done += n
                while i < len(views) and n >= len(views[i]):
                    n -= len(views[i])
                    i += 1
                if i < len(views) and n:
                    views[i] = views[i][n:]
        except OSError:
            self._restore_seal()
            raise
        self.pos = start + size
        return start

    def _restore_seal(self) -> None:
        """After a failed write (disk full): cut the partial record and put the seal
        back, so the file stays valid up to its last finished chunk. Best effort:
        if even that fails, readers still recover the prefix (a truncated tail)."""
        try:
            os.ftruncate(self.fd, self.pos)
            self.seal()
        except OSError as e:
            self.restore_error: OSError | None = e

    def seal(self) -> None:
        os.pwrite(self.fd, _SEAL, self.pos)

    def close(self) -> None:
        try:
            os.ftruncate(self.fd, self.pos)
        finally:
            os.close(self.fd)


class McapFile:
    """Write one MCAP file: schemas, channels, messages (chunked), metadata.

    ``chunk_size``: uncompressed bytes per chunk. ``compression``: ``"zstd"``
    (``level`` as in zstd) or ``"none"``.
    """

    def __init__(self, path: str | Path, *, chunk_size: int, compression: str = "zstd",
                 level: int | None = 3, profile: str = "", library: str = "") -> None:
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
        self._f = _File(Path(path))
        self._chunk_size = chunk_size
        self._compression = "" if compression == "none" else compression
        self._level: int | None = None
        self._zstd: zstandard.ZstdCompressor | None = None
        self.level = level if self._compression else None
        self._schemas: dict[int, Schema] = {}
        self._channels: dict[int, Channel] = {}
        self._chunk_indexes: list[ChunkIndex] = []
        self._metadata_indexes: list[MetadataIndex] = []
        self._counts: dict[int, int] = defaultdict(int)
        self._n = 0
        self.messages_written = 0  # in finished chunks: on disk, whatever happens next
        self._t_min = self._t_max = 0
        self._reset_chunk()
        self._f.write(MCAP0_MAGIC, _record(Header(profile, library)), seal=True)

    def _reset_chunk(self) -> None:
        self._parts: list[Buffer] = []
        self._size = 0
        self._c_n = 0
        self._c_min = self._c_max = 0
        self._index: dict[int, list[tuple[int, int]]] = {}

    @property
    def bytes_on_disk(self) -> int:
        return self._f.pos

    def channel_counts(self) -> dict[int, int]:
        """Messages added per channel id."""
        return dict(self._counts)

    @property
    def messages_pending(self) -> int:
        """Messages in the chunk being filled: lost if it is never written."""
        return self._c_n

    @property
    def level(self) -> int | None:
        return self._level

    @level.setter
    def level(self, level: int | None) -> None:
        """The zstd level of the next chunks (lower is faster and larger; None: the
        chunks are stored uncompressed, which MCAP allows chunk by chunk)."""
        if level != self._level or (level is not None and self._zstd is None):
            self._zstd = (zstandard.ZstdCompressor(level=level, write_content_size=True)
                          if level is not None else None)
        self._level = level

    def add_schema(self, name: str, encoding: str, data: bytes) -> int:
        sid = len(self._schemas) + 1
        self._schemas[sid] = s = Schema(id=sid, data=data, encoding=encoding, name=name)
        self._f.write(_record(s), seal=True)  # outside chunks: a reader meets it before any use
        return sid

    def add_channel(self, topic: str, message_encoding: str, schema_id: int,
                    metadata: dict[str, str]) -> int:
        cid = len(self._channels) + 1
        self._channels[cid] = c = Channel(id=cid, topic=topic, message_encoding=message_encoding,
                                          schema_id=schema_id, metadata=metadata)
        self._f.write(_record(c), seal=True)
        return cid

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        rec = _record(Metadata(name=name, metadata=data))
        offset = self._f.write(rec, seal=True)
        self._metadata_indexes.append(MetadataIndex(offset=offset, length=len(rec), name=name))

    def add_message(self, channel_id: int, log_time: int, pieces: Sequence[Buffer], *,
                    sequence: int = 0, publish_time: int | None = None) -> int:
        """Add a message whose data is the concatenation of ``pieces`` (not copied
        until the chunk is finished). Returns the data size. Finishing a chunk
        writes it: the caller must not change the buffers before that."""
        n = sum(memoryview(p).nbytes for p in pieces)
        head = _MSG_HEAD.pack(Opcode.MESSAGE, _MSG_FIXED + n, channel_id, sequence & 0xFFFFFFFF,
                              log_time, log_time if publish_time is None else publish_time)
        self._index.setdefault(channel_id, []).append((log_time, self._size))
        self._parts.append(head)
        self._parts.extend(pieces)
        self._size += len(head) + n
        if self._c_n == 0:
            self._c_min = self._c_max = log_time
        else:
            self._c_min, self._c_max = min(self._c_min, log_time), max(self._c_max, log_time)
        self._c_n += 1
        self._counts[channel_id] += 1
        if self._n == 0:
            self._t_min = self._t_max = log_time
        else:
            self._t_min, self._t_max = min(self._t_min, log_time), max(self._t_max, log_time)
        self._n += 1
        if self._size >= self._chunk_size:
            self.flush()
        return n

    def flush(self) -> None:
        """Finish the chunk being filled (if any) and seal the file."""
        if not self._c_n:
            return
        data = b"".join(self._parts)
        compressed = self._zstd.compress(data) if self._zstd is not None else data
        compression = self._compression if self._zstd is not None else ""
        comp = compression.encode()
        # The Chunk record (as mcap.records.Chunk writes it), with the data passed by reference.
        body_length = CHUNK_FIXED.size + len(comp) + _U64.size + len(compressed)
        head = _CHUNK_HEAD.pack(Opcode.CHUNK, body_length, self._c_min, self._c_max, len(data),
                                crc32(data), len(comp)) + comp + _U64.pack(len(compressed))
        chunk_length = len(head) + len(compressed)
        indexes: list[bytes] = []
        offsets: dict[int, int] = {}
        pos = self._f.pos + chunk_length
        for cid, entries in self._index.items():
            rec = _record(MessageIndex(channel_id=cid, records=entries))
            offsets[cid] = pos
            pos += len(rec)
            indexes.append(rec)
        start = self._f.write(head, compressed, *indexes, seal=True)
        self._chunk_indexes.append(ChunkIndex(
            message_start_time=self._c_min, message_end_time=self._c_max, chunk_start_offset=start,
            chunk_length=chunk_length, message_index_offsets=offsets,
            message_index_length=sum(len(r) for r in indexes), compression=compression,
            compressed_size=len(compressed), uncompressed_size=len(data)))
        self.messages_written += self._c_n
        self._reset_chunk()

    def finish(self) -> None:
        """Write the last chunk, the summary and the footer; close the file."""
        try:
            self.flush()
            self._f.write(_record(DataEnd(0)))
            summary_start = self._f.pos
            groups: list[tuple[int, list[bytes]]] = [
                (Opcode.SCHEMA, [_record(s) for s in self._schemas.values()]),
                (Opcode.CHANNEL, [_record(c) for c in self._channels.values()]),
                (Opcode.STATISTICS, [_record(Statistics(
                    attachment_count=0, channel_count=len(self._channels),
                    channel_message_counts=dict(self._counts),
                    chunk_count=len(self._chunk_indexes),
                    message_count=self._n, message_end_time=self._t_max,
                    message_start_time=self._t_min,
                    metadata_count=len(self._metadata_indexes),
                    schema_count=len(self._schemas)))]),
                (Opcode.CHUNK_INDEX, [_record(c) for c in self._chunk_indexes]),
                (Opcode.METADATA_INDEX, [_record(m) for m in self._metadata_indexes]),
            ]
            body: list[bytes] = []
            offsets: list[bytes] = []
            pos = summary_start
            for opcode, recs in groups:
                if not recs:
                    continue
                length = sum(len(r) for r in recs)
                offsets.append(_record(SummaryOffset(group_opcode=opcode, group_start=pos,
                                                     group_length=length)))
                body.extend(recs)
                pos += length
            summary = b"".join(body + offsets)
            offset_start = pos
            crc = crc32(summary)
            crc = crc32(FOOTER_HEAD.pack(Opcode.FOOTER, 20, summary_start, offset_start), crc)
            self._f.write(summary, _record(Footer(summary_start, offset_start, crc)), MCAP0_MAGIC)
        finally:
            self._f.close()

    def abandon(self) -> None:
        """Close without a summary, keeping the seal: the file stays readable up to
        its last finished chunk (used when a write failed, e.g. a full disk)."""
        os.close(self._f.fd)
