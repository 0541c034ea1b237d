"""Read recordings back: for replay, the trainer and ``streamfuse inspect``.

For a finished file, the summary (read with the ``mcap`` package) says which
chunks can hold the requested topics and time range: only those are read. A
file without a summary (its writer was killed, or it is still being written),
or whose summary holds no copy of its channels (valid MCAP), is read linearly,
every chunk; one that ends in the middle of a record yields
everything before that point and counts one ``truncated`` error. Chunks are
decompressed ahead on two threads and messages are views into them (no
per-message copies). Within a file and across files, messages come in
``t_ns`` (MCAP ``log_time``) order, exactly: a message is released only when no
chunk still to be read starts before it.

Every chunk is checked against its CRC. Bad content never raises: a record that
is not a streamfuse message is counted in ``errors`` by reason (``encoding`` for
a foreign channel, ``framing``, ``channel``, ``crc`` and ``corrupt`` for chunks,
with their messages under ``skipped_messages``, ``summary_crc`` for a summary that
fails its CRC (the file is then read linearly), ``truncated``, or a
:class:`codec.DecodeError` reason) and skipped; a damaged chunk is also logged
with its file and offset. A path that is missing or not MCAP at all, or a file
whose summary lists messages of which none can be read, raises
:class:`RecordingError` with one clear line.

Files are merged by time, as the parts of one recording (a rotated recording's
files follow each other). Two files that both hold a topic over the same stretch
of time are two different streams under one name (two data sets built with the
same clock, one room's recordings from two hosts): merged, their frames and
blocks would interleave into windows that never happened. :func:`check_disjoint`
refuses them, from the files' summaries.
"""

from __future__ import annotations

import glob
import heapq
import io
import logging
import math
import re
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.reader import SeekingReader
from mcap.records import Channel, MessageIndex
from mcap.summary import Summary
from mcap.writer import MCAP0_MAGIC

from streamfuse import clock
from streamfuse.clock import NS_PER_S
from streamfuse.record import format as fmt
from streamfuse.record import layout
from streamfuse.record.mcapfile import (
    MESSAGE_FIXED,
    RECORD_HEADER,
    crc32,
    read_chunk_head,
    summary_crc_ok,
)
from streamfuse.wire import codec
from streamfuse.wire.schema import Message as WireMessage

log = logging.getLogger("streamfuse.record")

# What a damaged file can raise from inside the mcap package.
_READ_ERRORS = (McapError, struct.error, ValueError, EOFError, KeyError, MemoryError, OSError,
                OverflowError)

Raw = tuple[str, int, list[bytes | memoryview]]


class RecordingError(Exception):
    """A recording that cannot be read at all (missing, not MCAP)."""


def recording_parts(path: Path) -> list[Path]:
    """The files ``streamfuse record --out NAME.mcap`` wrote: ``NAME-0000.mcap``,
    ``NAME-0001.mcap``, ... (numbered even when it did not rotate), sorted."""
    if path.suffix != ".mcap":
        return []
    pattern = re.compile(re.escape(path.stem) + r"-\d{4,}\.mcap")
    parts = [p for p in path.parent.glob(f"{glob.escape(path.stem)}-*.mcap")
             if pattern.fullmatch(p.name) and p.is_file()]
    return sorted(parts, key=lambda p: int(p.stem.rpartition("-")[2]))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories become every ``*.mcap`` directly inside, sorted; a
    ``NAME.mcap`` that does not exist becomes the parts that ``record --out NAME.mcap`` wrote."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.glob("*.mcap")))
        elif p.is_file():
            out.append(p)
        elif parts := recording_parts(p):
            out.extend(parts)
        else:
            also = f" (nor {p.stem}-0000.mcap, ...)" if p.suffix == ".mcap" else ""
            raise RecordingError(f"{p}: no such file or directory{also}")
    return out


# How far two files' spans of one topic may overlap and still be parts of one recording: a
# capture's messages arrive in the order it stamped them, so the parts of one topic follow
# each other; this only forgives a publisher whose stamps step back a little.
OVERLAP_TOLERANCE_NS = NS_PER_S


def topic_spans(path: str | Path) -> dict[str, tuple[int, int]]:
    """Per topic, the first and last ``t_ns`` of its messages in the file, from the summary's
    chunk indexes and each chunk's per-channel message index (small uncompressed records;
    nothing is decompressed). Where a chunk has no message index, its whole span counts for
    every channel. Empty for a file without a summary."""
    with _open(Path(path)) as f:
        summary = _summary(f)
        if summary is None:
            return {}
        spans: dict[str, tuple[int, int]] = {}
        for ci in summary.chunk_indexes:
            offsets: dict[int, int | None] = (dict(ci.message_index_offsets)
                                              or dict.fromkeys(summary.channels))
            for cid, offset in offsets.items():
                ch = summary.channels.get(cid)
                if ch is None:
                    continue
                span = _indexed_span(f, offset) if offset is not None else None
                lo, hi = span or (ci.message_start_time, ci.message_end_time)
                topic = wire_route(ch)[0]
                old = spans.get(topic)
                spans[topic] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return spans


def _indexed_span(f: io.BufferedReader, offset: int) -> tuple[int, int] | None:
    """Earliest and latest ``log_time`` in the MessageIndex record at ``offset``; None when it
    cannot be read or lists nothing."""
    try:
        f.seek(offset)
        opcode, length = RECORD_HEADER.unpack(f.read(RECORD_HEADER.size))
        if opcode != Opcode.MESSAGE_INDEX:
            return None
        index = MessageIndex.read(ReadDataStream(io.BytesIO(f.read(length))))
        times = [t for t, _ in index.records]
    except _READ_ERRORS:
        return None
    return (min(times), max(times)) if times else None


def check_disjoint(paths: Sequence[Path]) -> None:
    """Raise :class:`RecordingError` when a file is given twice, or when two files hold one
    topic over overlapping times (more than :data:`OVERLAP_TOLERANCE_NS`): merged by time
    they would interleave two streams into one. Files without a summary are not checked."""
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise RecordingError(f"{p}: given twice (also as {seen[key]}); "
                                 "its messages would be read twice")
        seen[key] = p
    owners: dict[str, list[tuple[int, int, Path]]] = {}
    for p in paths:
        for topic, (lo, hi) in topic_spans(p).items():
            for olo, ohi, other in owners.get(topic, []):
                if min(hi, ohi) - max(lo, olo) > OVERLAP_TOLERANCE_NS:
                    raise RecordingError(
                        f"{other} and {p} both hold {topic} from {_fmt_time(max(lo, olo))} to "
                        f"{_fmt_time(min(hi, ohi))}: two streams under one name, which merged by "
                        f"time would make windows that never happened. Read them separately, or "
                        f"record or replay one of them under another source name or with shifted "
                        f"times (replay --restamp)")
            owners.setdefault(topic, []).append((lo, hi, p))


def wire_route(ch: Channel) -> tuple[str, str]:
    """``(wire topic, layout)`` of a channel (:func:`streamfuse.record.layout.route`)."""
    return layout.route(ch.message_encoding, ch.topic, ch.metadata)


def _match(topic: str, prefixes: Sequence[str] | None) -> bool:
    return prefixes is None or any(topic.startswith(p) for p in prefixes)


def _open(path: Path) -> io.BufferedReader:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise RecordingError(f"{path}: cannot open: {e.strerror or e}") from None
    if f.read(len(MCAP0_MAGIC)) != MCAP0_MAGIC:
        f.close()
        raise RecordingError(f"{path}: not an MCAP file (bad magic)")
    return f


def _summary(f: io.BufferedReader, path: Path | None = None,
             errors: Counter[str] | None = None) -> Summary | None:
    """The file's summary, or None: it has none (its writer did not finish), or the summary
    fails its CRC (a damaged index could hide chunks). Either way the file is then read
    linearly. A CRC failure is counted in ``errors`` (``summary_crc``) and logged, if given."""
    try:
        f.seek(0)
        summary = SeekingReader(f).get_summary()
        if summary is None or summary_crc_ok(f, f.seek(0, io.SEEK_END)):
            return summary
    except _READ_ERRORS:
        return None  # no valid footer
    if errors is not None:
        errors["summary_crc"] += 1
        log.warning("%s: the summary fails its CRC: reading every chunk instead of the index", path)
    return None


# ----------------------------------------------------------------------------- file access


@dataclass
class _Rec:
    """A top-level record: a chunk, or a schema/channel/message outside chunks."""

    offset: int
    opcode: int
    length: int
    t_min: float  # earliest log_time inside (inf for records without messages)
    t_max: float = -math.inf
    compressed: int = 0
    uncompressed: int = 0


def _scan(f: io.BufferedReader, size: int) -> tuple[list[_Rec], bool]:
    """Record headers of the data section, without decompressing anything.

    Returns the records and whether the file ends inside a record.
    """
    recs: list[_Rec] = []
    pos = len(MCAP0_MAGIC)
    while True:
        if pos + RECORD_HEADER.size > size:
            return recs, True  # no footer: the writer did not finish
        f.seek(pos)
        opcode, length = RECORD_HEADER.unpack(f.read(RECORD_HEADER.size))
        body = pos + RECORD_HEADER.size
        if body + length > size:
            return recs, True
        if opcode in (Opcode.FOOTER, Opcode.DATA_END):
            return recs, False
        rec = _Rec(pos, opcode, length, math.inf)
        if opcode == Opcode.CHUNK:
            try:
                head = read_chunk_head(f, pos)
            except (struct.error, UnicodeDecodeError):
                head = None  # counted as corrupt when it is read
            if head is not None:
                rec.t_min, rec.t_max = head.start, head.end
                rec.uncompressed, rec.compressed = head.uncompressed_size, head.data_size
        elif opcode == Opcode.MESSAGE and length >= MESSAGE_FIXED.size:
            _ch, _seq, t, _pub = MESSAGE_FIXED.unpack(f.read(MESSAGE_FIXED.size))
            rec.t_min = rec.t_max = t
        recs.append(rec)
        pos = body + length


def _from_index(summary: Summary, wanted: set[int], start_ns: int | None,
                end_ns: int | None) -> list[_Rec]:
    """The chunks that may hold a wanted channel in the time range (from the summary)."""
    recs = []
    for ci in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
        if start_ns is not None and ci.message_end_time < start_ns:
            continue
        if end_ns is not None and ci.message_start_time >= end_ns:
            continue
        if ci.message_index_offsets and not wanted.intersection(ci.message_index_offsets):
            continue
        recs.append(_Rec(ci.chunk_start_offset, Opcode.CHUNK, ci.chunk_length - RECORD_HEADER.size,
                         ci.message_start_time, ci.message_end_time))
    return recs


class ChunkCRCError(McapError):
    """A chunk whose records do not match the CRC its writer stored."""

    def __init__(self, stored: int, computed: int) -> None:
        super().__init__(f"CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")


def _decompress(compression: str, data: bytes, size: int) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        import lz4.frame  # optional, as in the mcap package

        return lz4.frame.decompress(data)
    if compression == "":
        return data
    raise McapError(f"unsupported chunk compression {compression!r}")


def _load(f: io.BufferedReader, rec: _Rec) -> tuple[str, bytes, int, int]:
    """The stored bytes of a record: ``(compression, data, uncompressed size, CRC)``;
    for a record outside chunks, ``("record", body, len, 0)``."""
    if rec.opcode != Opcode.CHUNK:
        f.seek(rec.offset + RECORD_HEADER.size)
        body = f.read(rec.length)
        return "record", body, len(body), 0
    head = read_chunk_head(f, rec.offset)
    return head.compression, f.read(head.data_size), head.uncompressed_size, head.uncompressed_crc


def _records(opcode: int, compression: str, data: bytes, size: int,
             crc: int = 0) -> Iterator[tuple[int, memoryview]]:
    """``(opcode, body)`` of the records of a chunk (or the record itself); bodies
    are views into the decompressed chunk. A chunk that does not match its CRC
    (0: none stored) raises :class:`ChunkCRCError` before anything is yielded."""
    if compression == "record":
        yield opcode, memoryview(data)
        return
    view = memoryview(_decompress(compression, data, size))
    if crc:
        computed = crc32(view)
        if computed != crc:
            raise ChunkCRCError(crc, computed)
    pos, end = 0, len(view)
    while pos + RECORD_HEADER.size <= end:
        op, length = RECORD_HEADER.unpack_from(view, pos)
        pos += RECORD_HEADER.size
        if pos + length > end:
            raise McapError("record overruns its chunk")
        yield op, view[pos:pos + length]
        pos += length


Loaded = Callable[[], list[tuple[int, memoryview]]]


def _parse_all(opcode: int, compression: str, data: bytes, size: int,
               crc: int) -> list[tuple[int, memoryview]]:
    return list(_records(opcode, compression, data, size, crc))


def _failed(e: BaseException) -> Loaded:
    def raise_() -> list[tuple[int, memoryview]]:
        raise e

    return raise_


LOOKAHEAD = 3  # chunks decompressed ahead, on worker threads


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB for reuse (process-wide).

    Each chunk is read into a new buffer and decompressed into another (~4.5 MB
    with the default ``record.chunk_kb``). By default glibc hands blocks that
    large straight back to the kernel when freed, so every chunk page-faults
    fresh memory in, a fifth of what ``replay --max`` spends (docs/benchmarks.md,
    bench/replay_speed.py). Returns False (nothing changed) where the C library
    is not glibc.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # the largest glibc allows on 64-bit
    return bool(ok and libc.mallopt(m_trim_threshold, 512 * 1024 * 1024))


def _decompressed(f: io.BufferedReader, recs: list[_Rec]) -> Iterator[Loaded]:
    """For each record in order, a callable giving its records (or raising what
    reading it raised). The file is read here, in order; chunks decompress on two
    worker threads ahead of use (zstd releases the GIL)."""
    if sum(r.opcode == Opcode.CHUNK for r in recs) < 2:
        for rec in recs:
            try:
                loaded = _parse_all(rec.opcode, *_load(f, rec))
                yield lambda got=loaded: got  # type: ignore[misc]
            except (*_READ_ERRORS, zstandard.ZstdError) as e:
                yield _failed(e)
        return
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mcap-read")
    pending: deque[Loaded] = deque()
    try:
        for rec in recs:
            try:
                pending.append(pool.submit(_parse_all, rec.opcode, *_load(f, rec)).result)
            except _READ_ERRORS as e:
                pending.append(_failed(e))
            if len(pending) > LOOKAHEAD:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


_Item = tuple[int, int, str, str, bytes | memoryview]  # (t_ns, order, wire topic, layout, data)


def _indexed_count(f: io.BufferedReader, rec: _Rec) -> int | None:
    """How many messages the MessageIndex records right after the chunk ``rec`` list
    (where a writer puts them); None when it wrote none or they cannot be read."""
    pos = rec.offset + RECORD_HEADER.size + rec.length
    n: int | None = None
    try:
        while True:
            f.seek(pos)
            head = f.read(RECORD_HEADER.size)
            if len(head) < RECORD_HEADER.size:
                return n
            opcode, length = RECORD_HEADER.unpack(head)
            if opcode != Opcode.MESSAGE_INDEX:
                return n
            index = MessageIndex.read(ReadDataStream(io.BytesIO(f.read(length))))
            n = (n or 0) + len(index.records)
            pos += RECORD_HEADER.size + length
    except _READ_ERRORS:
        return n


def _skip(f: io.BufferedReader, path: Path, rec: _Rec, e: BaseException,
          errors: Counter[str]) -> None:
    """Count a record that cannot be read (``crc`` or ``corrupt``; for a chunk, also its
    messages under ``skipped_messages`` when its message index says how many) and log
    one line naming the file and the record's offset."""
    errors["crc" if isinstance(e, ChunkCRCError) else "corrupt"] += 1
    what = "chunk" if rec.opcode == Opcode.CHUNK else "record"
    n = _indexed_count(f, rec) if rec.opcode == Opcode.CHUNK else None
    if n:
        errors["skipped_messages"] += n
    lost = f"its {n} messages" if n is not None else "its messages (how many: no message index)"
    log.warning("%s: %s at offset %d is damaged (%s): skipping %s", path, what, rec.offset,
                str(e) or type(e).__name__, lost if what == "chunk" else "it")


def _ordered(f: io.BufferedReader, path: Path, recs: list[_Rec], channels: dict[int, Channel],
             prefixes: Sequence[str] | None, start_ns: int | None, end_ns: int | None,
             errors: Counter[str]) -> Iterator[_Item]:
    """Messages of ``recs`` (in file order) in log_time order. Exact and bounded:
    a message is released once no later record can start before it."""
    recs = [r for r in recs if r.opcode in (Opcode.CHUNK, Opcode.CHANNEL, Opcode.MESSAGE)]
    suffix_min = [math.inf] * (len(recs) + 1)
    for i in range(len(recs) - 1, -1, -1):
        suffix_min[i] = min(recs[i].t_min, suffix_min[i + 1])
    heap: list[_Item] = []
    order = 0
    routes: dict[int, tuple[str, str]] = {}
    for i, loaded in enumerate(_decompressed(f, recs)):
        while heap and heap[0][0] < suffix_min[i]:
            yield heapq.heappop(heap)
        try:
            for opcode, body in loaded():
                if opcode == Opcode.MESSAGE:
                    ch_id, _seq, t, _pub = MESSAGE_FIXED.unpack_from(body)
                    route = routes.get(ch_id)
                    if route is None and (ch := channels.get(ch_id)) is not None:
                        route = routes[ch_id] = wire_route(ch)
                    if route is None:
                        errors["channel"] += 1
                    elif (start_ns is None or t >= start_ns) and (end_ns is None or t < end_ns) \
                            and _match(route[0], prefixes):
                        data = body[MESSAGE_FIXED.size:]
                        heapq.heappush(heap, (t, order, route[0], route[1], data))
                        order += 1
                elif opcode == Opcode.CHANNEL:
                    c = Channel.read(ReadDataStream(io.BytesIO(body)))
                    channels.setdefault(c.id, c)
        except (*_READ_ERRORS, zstandard.ZstdError) as e:
            _skip(f, path, recs[i], e, errors)
    while heap:
        yield heapq.heappop(heap)


def _directs_reading(summary: Summary | None) -> bool:
    """Whether ``summary`` can say which chunks to read: it indexes the chunks and holds a
    copy of every channel they use. MCAP lets a writer leave the channels out of the
    summary (the ``mcap`` package's ``repeat_channels=False``); they are then only in the
    data section, and the file must be read linearly to meet them."""
    if summary is None or not summary.chunk_indexes or not summary.channels:
        return False
    used = {cid for ci in summary.chunk_indexes for cid in ci.message_index_offsets}
    if summary.statistics is not None:
        used.update(summary.statistics.channel_message_counts)
    return used <= set(summary.channels)


def _iter_file(path: Path, prefixes: Sequence[str] | None, start_ns: int | None, end_ns: int | None,
               errors: Counter[str]) -> Iterator[_Item]:
    """Messages of one file in log_time order. When the summary can direct it, only the
    chunks that can hold wanted messages are read; otherwise the file is read linearly.
    Raises :class:`RecordingError` when nothing at all could be read, and nothing was
    counted as damaged, from a file whose statistics list messages."""
    before = sum(errors.values())
    n = 0
    with _open(path) as f:
        summary = _summary(f, path, errors)
        for item in _file_items(f, path, summary, prefixes, start_ns, end_ns, errors):
            n += 1
            yield item
    stats = summary.statistics if summary is not None else None
    unfiltered = prefixes is None and start_ns is None and end_ns is None
    silent = n == 0 and sum(errors.values()) == before
    if unfiltered and silent and stats is not None and stats.message_count:
        raise RecordingError(f"{path}: its summary lists {stats.message_count} messages but none "
                             f"could be read: a layout this reader does not understand")


def _file_items(f: io.BufferedReader, path: Path, summary: Summary | None,
                prefixes: Sequence[str] | None, start_ns: int | None, end_ns: int | None,
                errors: Counter[str]) -> Iterator[_Item]:
    """The messages of :func:`_iter_file`: through the summary's index, or linearly."""
    if summary is not None and _directs_reading(summary):
        channels = dict(summary.channels)
        wanted = {i for i, c in channels.items() if _match(wire_route(c)[0], prefixes)}
        if wanted:
            yield from _ordered(f, path, _from_index(summary, wanted, start_ns, end_ns), channels,
                                prefixes, start_ns, end_ns, errors)
        return
    f.seek(0, io.SEEK_END)
    size = f.tell()
    recs, truncated = _scan(f, size)
    if truncated and (not recs or recs[-1].offset + RECORD_HEADER.size + recs[-1].length < size):
        end = recs[-1].offset + RECORD_HEADER.size + recs[-1].length if recs else len(MCAP0_MAGIC)
        errors["truncated"] += 1
        log.warning("%s: no summary and the file ends mid-record (writer killed?): reading the "
                    "first %d of %d bytes", path, end, size)
    # Channels live in the data section here (inside chunks or between them): read it all.
    yield from _ordered(f, path, recs, {}, prefixes, start_ns, end_ns, errors)


def _merged(paths: Iterable[str | Path], prefixes: Sequence[str] | None, start_ns: int | None,
            end_ns: int | None, errors: Counter[str]) -> Iterator[_Item]:
    files = expand_paths(paths)
    for p in files:  # fail on a bad path before yielding anything
        _open(p).close()
    its = [_iter_file(p, prefixes, start_ns, end_ns, errors) for p in files]
    yield from heapq.merge(*its, key=lambda item: item[0])


def read_raw(paths: Iterable[str | Path], *, topics: Sequence[str] | None = None,
             start_ns: int | None = None, end_ns: int | None = None,
             errors: Counter[str] | None = None) -> Iterator[Raw]:
    """``(topic, t_ns, parts)`` in ``t_ns`` order; ``parts`` = ``[topic, header,
    *payload]`` exactly as recorded (bytes-like: the topic is ``bytes``, the rest
    are zero-copy ``memoryview`` slices). ``topics`` are prefixes; ``start_ns``
    inclusive, ``end_ns`` exclusive."""
    errs = errors if errors is not None else Counter()
    for t_ns, _o, topic, lay, data in _merged(paths, topics, start_ns, end_ns, errs):
        if not lay:
            errs["encoding"] += 1
            continue
        try:
            parts = layout.decode(lay, data)
        except fmt.FramingError:
            errs["framing"] += 1
            continue
        yield topic, t_ns, [topic.encode(), *parts]


def read_messages(paths: Iterable[str | Path], *, topics: Sequence[str] | None = None,
                  start_ns: int | None = None, end_ns: int | None = None,
                  errors: Counter[str] | None = None) -> Iterator[WireMessage]:
    """Decoded, validated messages of one or more recordings in ``t_ns`` order
    (payloads are zero-copy views). Undecodable records are counted in
    ``errors`` by reason and skipped."""
    errs = errors if errors is not None else Counter()
    for _topic, _t, parts in read_raw(paths, topics=topics, start_ns=start_ns, end_ns=end_ns,
                                      errors=errs):
        try:
            yield codec.decode(parts)
        except codec.DecodeError as e:
            errs[e.reason] += 1


def check_file(path: str | Path) -> None:
    """Raise :class:`RecordingError` unless ``path`` opens as an MCAP file."""
    _open(Path(path)).close()


def file_time_range(path: str | Path) -> tuple[int, int] | None:
    """``(first, last)`` message ``t_ns`` of a file (None when it holds none),
    from its summary, else from its chunk headers (nothing is decompressed)."""
    with _open(Path(path)) as f:
        summary = _summary(f)
        stats = summary.statistics if summary is not None else None
        if stats is not None:
            if not stats.message_count:
                return None
            return stats.message_start_time, stats.message_end_time
        f.seek(0, io.SEEK_END)
        recs, _ = _scan(f, f.tell())
    lo = min((r.t_min for r in recs), default=math.inf)
    hi = max((r.t_max for r in recs), default=-math.inf)
    return (int(lo), int(hi)) if lo <= hi else None


def time_range(paths: Sequence[Path]) -> tuple[int, int] | None:
    """First and last ``t_ns`` over all files (from the summaries when present)."""
    lo: int | None = None
    hi: int | None = None
    for p in paths:
        r = file_time_range(p)
        if r is None:
            continue
        lo = r[0] if lo is None else min(lo, r[0])
        hi = r[1] if hi is None else max(hi, r[1])
    return None if lo is None or hi is None else (lo, hi)


# ----------------------------------------------------------------------------- inspect


class _Kind(msgspec.Struct):
    kind: str = ""
    seq: int = 0


_kind_decoder = msgspec.msgpack.Decoder(_Kind)


@dataclass
class TopicStats:
    topic: str
    kind: str
    messages: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    seq_gaps: int = 0  # messages missing by sequence number
    rate_hz: float = 0.0


@dataclass
class FileStats:
    path: str
    size_bytes: int = 0
    complete: bool = True  # has a summary
    chunks: int = 0
    compression: str = ""
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0
    compression_ratio: float = 0.0
    messages: int = 0
    first_ns: int = 0
    last_ns: int = 0
    duration_s: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    topics: list[TopicStats] = field(default_factory=list)


def _chunk_sizes(f: io.BufferedReader, summary: Summary | None) -> tuple[int, int, int, str]:
    """Chunks, compressed and uncompressed bytes, and the compressions used
    (``"zstd"``, ``"none"``, or e.g. ``"none+zstd"`` when the recorder had to
    store some chunks uncompressed)."""
    if summary is not None and summary.chunk_indexes:
        idx = summary.chunk_indexes
        kinds = {c.compression or "none" for c in idx}
        return len(idx), sum(c.compressed_size for c in idx), \
            sum(c.uncompressed_size for c in idx), "+".join(sorted(kinds))
    f.seek(0, io.SEEK_END)
    recs, _ = _scan(f, f.tell())
    chunks = [r for r in recs if r.opcode == Opcode.CHUNK]
    kinds = set()
    for c in chunks:
        try:
            kinds.add(read_chunk_head(f, c.offset).compression or "none")
        except (struct.error, UnicodeDecodeError):
            kinds.add("?")
    return len(chunks), sum(r.compressed for r in chunks), sum(r.uncompressed for r in chunks), \
        "+".join(sorted(kinds))


def _metadata(f: io.BufferedReader) -> dict[str, str]:
    f.seek(0)
    try:
        for m in SeekingReader(f).iter_metadata():
            if m.name == fmt.METADATA_NAME:
                return {k: v for k, v in m.metadata.items() if k != "config"}
    except _READ_ERRORS:
        pass  # a damaged file has no readable metadata; the rest is still reported
    return {}


def inspect_file(path: str | Path) -> FileStats:
    """Topics, counts, rates, sequence gaps, size and compression of one file."""
    p = Path(path)
    st = FileStats(str(p), size_bytes=p.stat().st_size if p.exists() else 0)
    with _open(p) as f:
        summary = _summary(f)
        st.complete = summary is not None
        st.chunks, st.compressed_bytes, st.uncompressed_bytes, st.compression = \
            _chunk_sizes(f, summary)
        st.metadata = _metadata(f)
    st.compression_ratio = (round(st.uncompressed_bytes / st.compressed_bytes, 3)
                            if st.compressed_bytes else 0.0)
    errors: Counter[str] = Counter()
    stats: dict[tuple[str, str], TopicStats] = {}
    last_seq: dict[tuple[str, str], int] = {}
    for _t, _o, topic, lay, data in _iter_file(p, None, None, None, errors):
        kind = ""
        seq = None
        if lay:
            try:
                hdr = _kind_decoder.decode(layout.decode(lay, data)[0])
                kind, seq = hdr.kind, hdr.seq
            except (fmt.FramingError, msgspec.DecodeError, msgspec.ValidationError):
                errors["header"] += 1
        else:
            kind = "(foreign)"
        key = (topic, kind)
        ts = stats.get(key)
        if ts is None:
            ts = stats[key] = TopicStats(topic, kind, first_ns=_t)
        ts.messages += 1
        ts.bytes += len(data)
        ts.last_ns = _t
        if seq is not None:
            prev = last_seq.get(key)
            if prev is not None and seq > prev + 1:
                ts.seq_gaps += seq - prev - 1
            last_seq[key] = seq
    for ts in stats.values():
        span = (ts.last_ns - ts.first_ns) / clock.NS_PER_S
        ts.rate_hz = round((ts.messages - 1) / span, 3) if span > 0 else 0.0
    st.topics = sorted(stats.values(), key=lambda s: (s.topic, s.kind))
    st.messages = sum(s.messages for s in st.topics)
    if st.topics:
        st.first_ns = min(s.first_ns for s in st.topics)
        st.last_ns = max(s.last_ns for s in st.topics)
        st.duration_s = round((st.last_ns - st.first_ns) / clock.NS_PER_S, 6)
    st.errors = dict(errors)
    return st


def _fmt_time(t_ns: int) -> str:
    import datetime

    when = datetime.datetime.fromtimestamp(t_ns / clock.NS_PER_S, tz=datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def print_stats(st: FileStats) -> None:
    """``streamfuse inspect``'s table of one file."""
    state = "" if st.complete else "  (no summary: writer did not finish)"
    print(f"{st.path}: {st.size_bytes / 1e6:.2f} MB, {st.messages} messages, {st.duration_s:.3f} s"
          f"{' from ' + _fmt_time(st.first_ns) if st.messages else ''}{state}")
    print(f"  {st.chunks} chunks, {st.compression or 'uncompressed'}, "
          f"compression ratio {st.compression_ratio:.2f} "
          f"({st.uncompressed_bytes / 1e6:.2f} MB raw)")
    if st.metadata:
        print("  " + ", ".join(f"{k}={v}" for k, v in sorted(st.metadata.items())))
    if st.errors:
        print(f"  unreadable records: {st.errors}")
    w = max([len(t.topic) for t in st.topics] + [5])
    print(f"  {'topic':<{w}}  {'kind':<10} {'count':>8} {'rate_hz':>9} {'seq_gaps':>8} {'MB':>9}")
    for t in st.topics:
        print(f"  {t.topic:<{w}}  {t.kind:<10} {t.messages:>8} {t.rate_hz:>9.2f} "
              f"{t.seq_gaps:>8} {t.bytes / 1e6:>9.2f}")
