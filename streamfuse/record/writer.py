"""Write bus messages to MCAP files; ``streamfuse record`` (README.md, "Recordings").

:class:`RecordingWriter` writes one MCAP file in the layout of
:mod:`streamfuse.record.format` through :class:`~streamfuse.record.mcapfile.McapFile`,
which keeps the file valid after every finished chunk: a writer killed with
SIGKILL leaves a summary-less MCAP that any reader opens, holding everything
but the chunk being filled (and, in the recorder, its queue).
:meth:`RecordingWriter.close` writes the summary and index.

The recorder (:func:`main`) receives on one thread and writes on the main
thread through a bounded queue (``QUEUE_BYTES``), so the bus is never blocked.
When writing falls behind, the zstd level steps down (:class:`LevelPolicy`,
down to uncompressed chunks); only when even that cannot keep up are messages
dropped, and counted (``streamfuse_recorder_dropped_total{reason="queue_full"}``).
``streamfuse_recorder_messages_total`` counts messages once their chunk is on disk; when a
write fails (a full disk) the recorder exits 1, and the messages of the chunk it was filling
and of its queue are counted as ``reason="write_failed"``: the counters always add up to
what the files hold plus what was dropped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import socket
import sys
import threading
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import zmq

from streamfuse import __version__, clock, metrics
from streamfuse.config import Config
from streamfuse.frameplane.inline import Inliner
from streamfuse.node import Runtime, polling
from streamfuse.record import format as fmt
from streamfuse.record import layout
from streamfuse.record.mcapfile import McapFile
from streamfuse.record.reader import recording_parts
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import SCHEMA_VERSION, Message
from streamfuse.wire.sockets import connect_sub, max_message_bytes

log = logging.getLogger("streamfuse.record")

QUEUE_BYTES = 512 * 1024 * 1024  # the recorder's backlog limit: beyond it messages are dropped


def default_metadata(cfg: Config | None = None) -> dict[str, str]:
    """The metadata record: version, host, schema version and the config."""
    md = {
        "streamfuse_version": __version__,
        "schema_version": str(SCHEMA_VERSION),
        "host": socket.gethostname(),
        "layout": "foxglove",  # docs/protocol.md, "Recordings"
    }
    if cfg is not None:
        md["config_path"] = cfg.path
        md["config"] = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return md


def _kept(parts: Sequence[Any], bufs: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """Payload buffers safe to hold until their chunk is written: a received zmq.Frame or
    bytes never changes and is kept by reference; a writable buffer is copied."""
    out: list[bytes | memoryview] = []
    for part, b in zip(parts, bufs, strict=True):
        view = memoryview(b)
        if view.nbytes > fmt.MAX_PART:
            raise codec.DecodeError("too_large", f"part of {view.nbytes} bytes")
        keep = isinstance(part, (bytes, zmq.Frame)) or view.readonly
        out.append(b if keep else bytes(view))
    return out


class RecordingWriter:
    """One MCAP file of bus messages; a context manager.

    ``chunk_size`` (bytes, uncompressed) trades compression ratio and write
    efficiency against what a crash can lose (one chunk). ``compression`` is
    ``"zstd"`` (default, ``zstd_level`` 3) or ``"none"``. Immutable parts
    (``bytes``, received ``zmq.Frame`` buffers) are kept by reference until their
    chunk is written; writable buffers (numpy arrays) are copied at once, so the
    caller may reuse them. ``legacy`` writes every message in the ``wire`` layout under
    its own topic, as recordings were written before the Foxglove layouts (kept to make
    old-format files for tests and to measure against).
    """

    def __init__(self, path: str | Path, *, chunk_size: int = 4 * 1024 * 1024,
                 compression: str = "zstd", metadata: dict[str, str] | None = None,
                 zstd_level: int | None = 3,
                 legacy: bool = False) -> None:
        self.path = Path(path)
        self._mcap = McapFile(self.path, chunk_size=chunk_size, compression=compression,
                              level=zstd_level, profile=fmt.PROFILE,
                              library=f"streamfuse {__version__}")
        self._legacy = legacy
        if not legacy:
            layout.preload()
        self._schemas: dict[str, int] = {}
        md = {**default_metadata(), **(metadata or {})}
        if legacy:
            md["message_encoding"] = fmt.MESSAGE_ENCODING
        self._mcap.add_metadata(fmt.METADATA_NAME, md)
        self._channels: dict[tuple[str, str], int] = {}
        self._closed = False
        self.messages = 0
        self.data_bytes = 0  # uncompressed message data
        self.first_t_ns: int | None = None
        self.last_t_ns: int | None = None

    @property
    def bytes_on_disk(self) -> int:
        return self._mcap.bytes_on_disk

    @property
    def messages_on_disk(self) -> int:
        """Messages in finished chunks (``messages`` counts those still buffered too)."""
        return self._mcap.messages_written

    @property
    def messages_pending(self) -> int:
        return self._mcap.messages_pending

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _channel(self, topic: str, lay: str) -> int:
        ch = self._channels.get((topic, lay))
        if ch is None:
            spec = layout.channel_spec(topic, lay)
            sid = self._schemas.get(spec.schema_name)
            if sid is None:
                sid = self._schemas[spec.schema_name] = self._mcap.add_schema(
                    spec.schema_name, spec.schema_encoding, spec.schema_data)
            if self._legacy:
                meta = {k: spec.metadata[k] for k in ("source", "stream")}
                ch = self._mcap.add_channel(topic, spec.message_encoding, sid, meta)
            else:
                ch = self._mcap.add_channel(spec.topic, spec.message_encoding, sid, spec.metadata)
            self._channels[(topic, lay)] = ch
        return ch

    def write(self, parts: Sequence[bytes | memoryview | zmq.Frame],
              t_ns: int | None = None) -> int:
        """Record wire parts ``[topic, header, *payload]`` byte for byte.

        ``t_ns`` None: taken from the header. Returns the message data size in
        bytes (uncompressed, framing included). Raises :class:`codec.DecodeError`
        (``parts``, ``topic``, ``header``, ``field``) for parts it cannot file,
        ``OSError`` when the disk refuses a write.
        """
        if len(parts) < 2:
            raise codec.DecodeError("parts",
                                    f"need at least topic and header, got {len(parts)} parts")
        bufs = [codec.buffer(p) for p in parts]
        try:
            topic = bytes(bufs[0]).decode("utf-8")
            topics.split(topic)
        except (UnicodeDecodeError, ValueError):
            raise codec.DecodeError("topic", f"bad topic {bytes(bufs[0])[:64]!r}") from None
        info: layout.Info | None = None
        try:
            info = layout.read_info(bufs[1])
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            problem = str(e)
        if t_ns is None:
            if info is None:
                raise codec.DecodeError("header", f"no t_ns in header: {problem}")
            t_ns = info.t_ns
        if t_ns < 0:
            raise codec.DecodeError("field", f"negative t_ns {t_ns}")
        payload = _kept(parts[2:], bufs[2:])
        if info is None or self._legacy:
            lay, pieces = "wire", layout.encode_wire(bufs[1], payload)
            seq = 0 if info is None else info.seq
        else:
            lay = layout.choose(info, payload)
            pieces, seq = layout.encode(lay, info, bufs[1], payload), info.seq
        n = self._mcap.add_message(self._channel(topic, lay), t_ns, pieces, sequence=seq)
        self.messages += 1
        self.data_bytes += n
        self.first_t_ns = t_ns if self.first_t_ns is None else min(self.first_t_ns, t_ns)
        self.last_t_ns = t_ns if self.last_t_ns is None else max(self.last_t_ns, t_ns)
        return n

    def write_message(self, msg: Message) -> int:
        """Record a decoded message (encoded and validated by :func:`codec.encode`)."""
        return self.write(codec.encode(msg))

    def channel_counts(self) -> dict[str, int]:
        """Messages written per channel, keyed ``"<MCAP topic> <schema name>"``."""
        names: dict[int, str] = {}
        for (topic, lay), cid in self._channels.items():
            spec = layout.channel_spec(topic, lay)
            names[cid] = f"{topic if self._legacy else spec.topic} {spec.schema_name}"
        return {names[cid]: n for cid, n in self._mcap.channel_counts().items()}

    @property
    def zstd_level(self) -> int | None:
        return self._mcap.level

    @zstd_level.setter
    def zstd_level(self, level: int | None) -> None:
        """Takes effect from the next chunk; None stores chunks uncompressed."""
        self._mcap.level = level

    def flush(self) -> None:
        """Finish the chunk being filled, so a crash loses nothing written so far."""
        self._mcap.flush()

    def close(self) -> None:
        """Write the summary and index and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._mcap.finish()

    def abandon(self) -> None:
        """Close after a failed write, without a summary: the file stays readable
        up to its last finished chunk."""
        if not self._closed:
            self._closed = True
            self._mcap.abandon()


# ----------------------------------------------------------------------------- rotation


def numbered_path(out: str | Path, index: int, *, stamp: str = "") -> Path:
    """``rec.mcap`` -> ``rec-0000.mcap``; a directory -> ``DIR/rec-<stamp>-0000.mcap``."""
    out = Path(out)
    if out.suffix == ".mcap":
        return out.with_name(f"{out.stem}-{index:04d}.mcap")
    return out / f"rec-{stamp}-{index:04d}.mcap" if stamp else out / f"rec-{index:04d}.mcap"


@dataclasses.dataclass(frozen=True)
class Rotation:
    """When to start the next file: at ``max_bytes`` on disk or ``max_duration_ns``."""

    max_bytes: int
    max_duration_ns: int

    def due(self, bytes_on_disk: int, opened_ns: int, now_ns: int) -> bool:
        return bytes_on_disk >= self.max_bytes or now_ns - opened_ns >= self.max_duration_ns


# ----------------------------------------------------------------------------- retention


_OWN_IN_DIR = re.compile(r"rec-(\d{8}T\d{6}Z-)?\d{4,}\.mcap")  # numbered_path in a directory


def own_recordings(out: str | Path) -> list[Path]:
    """The files a recorder writing to ``out`` names (:func:`numbered_path`), from any start:
    ``DIR/rec-*-NNNN.mcap`` for a directory, ``stem-NNNN.mcap`` beside ``stem.mcap``. Never a
    symbolic link or another program's file."""
    out = Path(out)
    if out.suffix == ".mcap":
        found = recording_parts(out)
    else:
        try:
            found = [p for p in sorted(out.iterdir()) if _OWN_IN_DIR.fullmatch(p.name)
                     and p.is_file()]
        except OSError:
            return []
    return [p for p in found if not p.is_symlink()]


@dataclasses.dataclass(frozen=True)
class Retention:
    """Which finished recordings to remove: the oldest first, until they total at most
    ``max_bytes`` and none was last written more than ``max_age_s`` ago (0 = no limit)."""

    max_bytes: int
    max_age_s: float

    def victims(self, files: Sequence[tuple[Path, int, float]],
                now_s: float) -> list[tuple[Path, str]]:
        """``files``: ``(path, size, mtime)`` of the finished files; ``(path, reason)`` to
        remove, oldest first (reason ``age`` or ``size``)."""
        total = sum(size for _, size, _ in files)
        out: list[tuple[Path, str]] = []
        for path, size, mtime in sorted(files, key=lambda f: (f[2], f[0].name)):
            if self.max_age_s and now_s - mtime > self.max_age_s:
                out.append((path, "age"))
            elif self.max_bytes and total > self.max_bytes:
                out.append((path, "size"))
            else:
                break  # newer files are younger still, and the total now fits
            total -= size
        return out


def apply_retention(out: str | Path, current: Path, retention: Retention) -> int:
    """Remove what ``retention`` picks among ``out``'s finished recordings (never ``current``,
    the file being written); the number removed. A file that cannot be removed is logged."""
    files = []
    for p in own_recordings(out):
        if p == current:
            continue
        try:
            st = p.stat()
        except OSError:
            continue  # removed meanwhile
        files.append((p, st.st_size, st.st_mtime))
    sizes = {p: size for p, size, _ in files}
    removed = 0
    for path, reason in retention.victims(files, clock.wall_ns() / clock.NS_PER_S):
        size = sizes[path]
        try:
            path.unlink()
        except OSError as e:
            log.warning("retention: cannot remove %s: %s", path, e.strerror or e)
            continue
        removed += 1
        metrics.recorder_removed.labels(reason).inc()
        log.info("retention: removed %s (%.1f MB, %s)", path.name, size / 1e6, reason)
    return removed


@dataclasses.dataclass
class LevelPolicy:
    """Compression that gives way under load: when the write queue holds more than
    ``high`` bytes the zstd level steps down (3 -> 1 -> -1 -> -5: faster, larger
    files) so the recorder keeps up instead of dropping; after ``calm_ns`` with
    the queue under ``low`` it steps back up."""

    high: int
    low: int
    levels: tuple[int | None, ...] = (3, 1, -1, -5, None)  # None: chunks stored uncompressed
    calm_ns: int = 5 * clock.NS_PER_S
    settle_ns: int = clock.NS_PER_S // 2  # a new level needs a chunk or two to show its effect
    step: int = 0
    calm_since: int | None = None
    changed_ns: int | None = None

    @property
    def level(self) -> int | None:
        return self.levels[self.step]

    def update(self, queued_bytes: int, now_ns: int) -> int | None:
        settled = self.changed_ns is None or now_ns - self.changed_ns >= self.settle_ns
        if queued_bytes > self.high and self.step < len(self.levels) - 1:
            if settled:
                self.step += 1
                self.changed_ns = now_ns
            self.calm_since = None
        elif queued_bytes < self.low and self.step > 0:
            if self.calm_since is None:
                self.calm_since = now_ns
            elif now_ns - self.calm_since >= self.calm_ns:
                self.step -= 1
                self.calm_since = self.changed_ns = now_ns
        elif queued_bytes >= self.low:
            self.calm_since = None
        return self.level


class _Queue:
    """Bounded by messages and bytes; ``put`` never blocks (the bus must not wait)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.items: deque[tuple[list[zmq.Frame], int]] = deque()
        self.max_items, self.max_bytes = max_items, max_bytes
        self.bytes = 0
        self.cond = threading.Condition()

    def put(self, parts: list[zmq.Frame], size: int) -> bool:
        with self.cond:
            if len(self.items) >= self.max_items or self.bytes + size > self.max_bytes:
                return False
            self.items.append((parts, size))
            self.bytes += size
            self.cond.notify()
            return True

    def get(self, timeout: float) -> list[zmq.Frame] | None:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            if not self.items:
                return None
            parts, size = self.items.popleft()
            self.bytes -= size
            return parts


def _receive(ctx: zmq.Context, cfg: Config, prefixes: list[str], q: _Queue, stop: threading.Event,
             counts: Counter[str], ready: threading.Event) -> None:
    """Receiver thread: SUB -> queue, zero-copy; counts what did not fit.

    Frames by reference are copied out of the frame plane here, on arrival, so the
    recording holds pixels (docs/architecture.md, "Frame plane") and a slow disk
    cannot outlast the frame's slot."""
    with Runtime(ctx) as rt:
        sub = rt.open(None, lambda c: connect_sub(c, cfg.bus, prefixes))
        inliner = Inliner(max_bytes=max_message_bytes(cfg.bus))
        try:
            ready.set()
            for readable in polling(sub, 100, stop):
                if readable:
                    _take(sub, inliner, q, counts)
        finally:
            inliner.close()


def _take(sub: zmq.Socket, inliner: Inliner, q: _Queue, counts: Counter[str]) -> None:
    """Queue a burst of waiting messages (up to 1000, then ``stop`` is checked again)."""
    for _ in range(1000):
        try:
            parts = sub.recv_multipart(copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        got = inliner.parts(parts)
        if got is None:
            counts["overwritten"] += 1
            continue
        parts = list(got)
        size = sum(len(p) for p in parts)
        if not q.put(parts, size):
            counts["queue_full"] += 1


def _retention(cfg: Config, out: str) -> Retention | None:
    """``record.keep_mb`` / ``keep_days``, for the daemon's recorder (``out`` is
    ``record.path``) only: the file being written is counted at ``max_size_mb``."""
    rec = cfg.record
    if not (rec.keep_mb or rec.keep_days) or Path(out).resolve() != Path(rec.path).resolve():
        return None
    # keep_mb is 0 or >= 2 * max_size_mb (config check), so the finished files keep a limit
    keep = rec.keep_mb - rec.max_size_mb if rec.keep_mb else 0.0
    return Retention(max_bytes=int(keep * 1024 * 1024), max_age_s=rec.keep_days * 86400.0)


class _Recorder:
    """The writing side: rotation, retention, periodic chunk flushes, metrics."""

    FLUSH_NS = clock.NS_PER_S  # a chunk is finished at least this often (bounds crash loss)

    METRICS_NS = clock.NS_PER_S // 2

    def __init__(self, cfg: Config, out: str, *, start_ns: int, rx_dropped: Counter[str]) -> None:
        self.cfg = cfg
        self.rx_dropped = rx_dropped  # counted by the receiver thread
        self.dropped_counted: Counter[str] = Counter()
        self.published_ns = start_ns
        self.out = out
        utc = datetime.datetime.fromtimestamp(start_ns / clock.NS_PER_S, tz=datetime.timezone.utc)
        self.stamp = f"{utc:%Y%m%dT%H%M%SZ}" if Path(out).suffix != ".mcap" else ""
        self.rotation = Rotation(int(cfg.record.max_size_mb * 1024 * 1024),
                                 int(cfg.record.max_duration_s * clock.NS_PER_S))
        self.index = 0
        self.writer: RecordingWriter | None = None
        self.opened_ns = self.flushed_ns = start_ns
        self.files: list[Path] = []
        self.closed_messages = 0  # on disk in the files closed (or abandoned) so far
        self.bytes = 0
        self.counted = (0, 0)
        self.dropped: Counter[str] = Counter()
        self.policy = LevelPolicy(high=QUEUE_BYTES // 8, low=QUEUE_BYTES // 64)
        self.retention = _retention(cfg, out)

    def _open(self, now_ns: int) -> RecordingWriter:
        path = numbered_path(self.out, self.index, stamp=self.stamp)
        while path.exists():  # never overwrite a recording (e.g. a restart within the same second)
            self.index += 1
            path = numbered_path(self.out, self.index, stamp=self.stamp)
        self.index += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        w = RecordingWriter(path, chunk_size=self.cfg.record.chunk_kb * 1024,
                            metadata=default_metadata(self.cfg), zstd_level=self.policy.level)
        self.files.append(path)
        self.opened_ns = self.flushed_ns = now_ns
        log.info("recording to %s", path)
        if self.retention is not None:
            apply_retention(self.out, path, self.retention)
        return w

    @property
    def messages(self) -> int:
        """Messages on disk: in finished chunks, never those still buffered (a crash loses them)."""
        open_file = self.writer.messages_on_disk if self.writer is not None else 0
        return self.closed_messages + open_file

    def write(self, parts: list[zmq.Frame], now_ns: int) -> None:
        if self.writer is None:
            self.writer = self._open(now_ns)
        before = self.writer.bytes_on_disk
        try:
            self.writer.write(parts)
        except codec.DecodeError as e:
            self.dropped[e.reason] += 1
            return
        self.bytes += self.writer.bytes_on_disk - before

    def tick(self, now_ns: int, queued_bytes: int = 0) -> None:
        """Rotate or flush when due, adapt compression to the backlog; publish metrics."""
        w = self.writer
        level = self.policy.level
        if self.policy.update(queued_bytes, now_ns) != level:
            log.info("write backlog %.0f MB: zstd level %s -> %s",
                     queued_bytes / 1e6, level, self.policy.level)
            if w is not None:
                w.zstd_level = self.policy.level
        if w is not None and self.rotation.due(w.bytes_on_disk, self.opened_ns, now_ns):
            self._close_file()
        elif w is not None and now_ns - self.flushed_ns >= self.FLUSH_NS:
            before = w.bytes_on_disk
            w.flush()
            self.bytes += w.bytes_on_disk - before
            self.flushed_ns = now_ns
            self.published_ns = now_ns
            self.publish_metrics()  # counted as soon as on disk: a SIGKILL next loses no count
        if now_ns - self.published_ns >= self.METRICS_NS:
            self.publish_metrics()
            self.published_ns = now_ns

    def publish_metrics(self) -> None:
        """Add what changed since the last call to the Prometheus counters."""
        m, b = self.counted
        if self.messages > m:
            metrics.recorder_messages.inc(self.messages - m)
        if self.bytes > b:
            metrics.recorder_bytes.inc(self.bytes - b)
        self.counted = (self.messages, self.bytes)
        dropped = self.dropped + self.rx_dropped
        for reason, n in (dropped - self.dropped_counted).items():
            metrics.recorder_dropped.labels(reason).inc(n)
        self.dropped_counted = dropped

    def _close_file(self) -> None:
        w = self.writer
        if w is not None:
            before = w.bytes_on_disk
            w.close()  # an OSError leaves the writer here, for fail() to account for
            self.writer = None
            self.closed_messages += w.messages_on_disk
            self.bytes += max(0, w.bytes_on_disk - before)
            self.publish_metrics()

    def close(self) -> None:
        self._close_file()

    def fail(self, queued: int) -> None:
        """After a write failed (a full disk): the file is kept up to its last finished
        chunk; what was buffered or still queued is dropped, counted as ``write_failed``."""
        lost = queued
        w, self.writer = self.writer, None
        if w is not None:
            lost += w.messages_pending
            w.abandon()  # readable up to its last finished chunk
            self.closed_messages += w.messages_on_disk
        if lost:
            self.dropped["write_failed"] += lost


def main(cfg: Config, out: str, *, topic_prefixes: Sequence[str] | None = None,
         duration: float | None = None, stop: threading.Event) -> int:
    """Record the topics under ``topic_prefixes`` (default: ``record.topics``, else all) to
    ``out`` until ``stop`` is set or ``duration`` seconds have passed; 1 when writing failed."""
    prefixes = list(topic_prefixes or cfg.record.topics or [""])
    start_ns = clock.now_ns()
    deadline = start_ns + int(duration * clock.NS_PER_S) if duration else None
    recv_counts: Counter[str] = Counter()
    rec = _Recorder(cfg, out, start_ns=start_ns, rx_dropped=recv_counts)
    try:
        rec.writer = rec._open(start_ns)  # fail early on an unwritable path
    except OSError as e:
        print(f"streamfuse record: cannot write {e.filename or out}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    q = _Queue(max_items=max(cfg.bus.hwm, 1000) * 4, max_bytes=QUEUE_BYTES)
    stop_rx = threading.Event()
    ready = threading.Event()
    rt = Runtime()  # the context; the receiver thread opens and closes its socket in it
    rx = threading.Thread(target=_receive, name="record-rx",
                          args=(rt.ctx, cfg, prefixes, q, stop_rx, recv_counts, ready))
    rx.start()
    try:
        if ready.wait(5):
            rt.ready()  # subscribed: what is published from now on is recorded
        log.info("recording topics %s from %s", prefixes, cfg.bus.output)
        code = _write_until(rec, q, rx, stop, deadline)
        stop_rx.set()
        rx.join(5)
        while (parts := q.get(0)) is not None:  # what was already received is written
            rec.write(parts, clock.now_ns())
        rec.close()
    except OSError as e:
        print(f"streamfuse record: cannot write {rec.files[-1] if rec.files else out}: "
              f"{e.strerror or e}", file=sys.stderr)
        stop_rx.set()
        rx.join(5)  # nothing more gets queued: what is there is counted as dropped
        rec.fail(queued=len(q.items))
        code = 1
    finally:
        stop_rx.set()
        rx.join(5)
        rt.abort()
    rec.publish_metrics()
    dropped = recv_counts + rec.dropped
    log.info("recorded %d messages, %.1f MB in %d file(s), dropped %d%s", rec.messages,
             rec.bytes / 1e6, len(rec.files), sum(dropped.values()),
             f" {dict(dropped)}" if dropped else "")
    return code


def _write_until(rec: _Recorder, q: _Queue, rx: threading.Thread, stop: threading.Event,
                 deadline: int | None) -> int:
    """Write what the receiver queues until ``stop``, the ``deadline`` (``t_ns``) or the
    receiver's end (then 1, else 0)."""
    while not stop.is_set():
        now = clock.now_ns()
        if deadline is not None and now >= deadline:
            break
        parts = q.get(0.05)
        if parts is not None:
            rec.write(parts, now)
        rec.tick(now, q.bytes)
        if not rx.is_alive():
            print("streamfuse record: the receiver stopped", file=sys.stderr)
            return 1
    return 0
