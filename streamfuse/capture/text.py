"""``streamfuse capture text``: text messages onto the bus, with heartbeats.

Inputs (``sources.text.input``):

- ``zmq``: a REP socket bound at ``sources.text.endpoint`` (default
  ``ipc://<directory of bus.input>/text-<source>``); ``streamfuse send`` is its
  client. Each request is one message; the reply is ``ok`` or ``rejected: ...``.
- ``stdin``: one message per line; the capture ends at end of input.
- ``fifo:PATH``: one message per line; the FIFO is created if missing and
  reopened whenever its last writer closes it.
- ``file:PATH``: follows lines appended to the file like ``tail -F``: starts at
  its end, survives rotation (rename + new file) and truncation. PATH must be a
  regular file (a directory, device or FIFO is refused at start); each read hands
  out at most 1 MiB, so a huge or fast-growing file cannot starve the heartbeats.

Invalid UTF-8 and messages over ``max_bytes`` are rejected and counted
(``streamfuse_messages_dropped_total{reason="text"|"too_large"}`` and the exit
line). Heartbeats go out at least every ``heartbeat_ms`` with watermark = now,
and just after each end of the aligner's windows, so windows close when nobody
types, without waiting for the next periodic heartbeat. ``t_ns`` is the receive time.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from streamfuse import clock, config
from streamfuse.capture.publish import Heartbeats, StreamPublisher
from streamfuse.config import BusConfig, TextConfig, ipc_path
from streamfuse.node import EXIT_CANNOT_OPEN, OPEN_ERRORS, Runtime
from streamfuse.wire import codec
from streamfuse.wire.sockets import (
    LINGER_MS,
    bind_receiver,
    check_authorized,
    connect_pub,
    start_authenticator,
)

log = logging.getLogger("streamfuse.capture.text")

READ_CHUNK = 65536
READ_BUDGET = 1 << 20  # bytes one read of a followed file hands out at most
FILE_POLL_S = 0.05
REJECT_LOG_EVERY_NS = 10 * clock.NS_PER_S


# ----------------------------------------------------------------------------- pure parts


class Rejected(ValueError):
    """A message that is not published; ``reason`` is the drop counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def validate(raw: bytes, max_bytes: int) -> str:
    """The text of ``raw``, or :class:`Rejected` (``too_large`` or ``text``: not UTF-8, or
    empty, as the line inputs skip empty lines)."""
    if not raw:
        raise Rejected("text", "empty message")
    if len(raw) > max_bytes:
        raise Rejected("too_large", f"message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("text", f"not UTF-8 ({e.reason} at byte {e.start})") from None


class LineSplitter:
    """Bytes in, complete lines out (without ``\\n`` / ``\\r\\n``), memory bounded.

    A line longer than ``max_bytes`` is not kept: it comes out once as a
    :class:`Rejected` ``too_large`` item and the rest of it is skipped up to its
    newline. Empty lines are skipped.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.skipping = False

    def feed(self, data: bytes) -> list[bytes | Rejected]:
        out: list[bytes | Rejected] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            self._take(data[start:nl], out, end=True)
            start = nl + 1
        self._take(data[start:], out, end=False)
        return out

    def flush(self) -> list[bytes | Rejected]:
        """The unterminated last line (at end of input), if any."""
        out: list[bytes | Rejected] = []
        self._take(b"", out, end=True)
        return out

    def _take(self, piece: bytes, out: list[bytes | Rejected], *, end: bool) -> None:
        if not self.skipping:
            self.buf += piece
            if len(self.buf.rstrip(b"\r")) > self.max_bytes:
                out.append(Rejected("too_large", f"line longer than {self.max_bytes} bytes"))
                self.buf.clear()
                self.skipping = True
        if end:
            if not self.skipping:
                line = bytes(self.buf).rstrip(b"\r")
                if line:
                    out.append(line)
            self.buf.clear()
            self.skipping = False


def follow_action(read_pos: int, open_ino: int, path_ino: int | None, path_size: int) -> str:
    """What ``tail -F`` does next for a followed file.

    ``read_pos``/``open_ino``: where we are in the file we hold open; ``path_ino``
    and ``path_size``: what the path names now (``None``: nothing). Returns
    ``"read"`` (keep reading the open file), ``"rotated"`` (finish the open file,
    then open the path from its start), ``"truncated"`` (rewind to 0) or
    ``"missing"`` (keep the open file, wait for the path to come back).
    """
    if path_ino is None:
        return "missing"
    if path_ino != open_ino:
        return "rotated"
    if path_size < read_pos:
        return "truncated"
    return "read"


def text_endpoint(cfg: TextConfig, bus: BusConfig, source: str) -> str:
    """Where the ``zmq`` input of ``source`` binds (and ``streamfuse send`` connects)."""
    return config.text_endpoint(cfg, bus, source)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Item:
    """One message read from an input; ``reply`` is set for ``zmq`` requests."""

    raw: bytes | Rejected
    origin: str


class ZmqInput:
    """A REP socket under the bus's network rule: ``bus.max_message_mb`` per message and,
    with ``[bus.curve]`` enabled, a CurveZMQ server on ``tcp://`` (``send`` then needs keys)."""

    origin = "zmq"

    def __init__(self, ctx: zmq.Context, endpoint: str, bus: BusConfig,
                 max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes  # of a whole request, all its parts together
        self.auth: Any = None
        if bus.curve.enabled and endpoint.startswith("tcp://"):
            check_authorized(bus)
            self.auth = start_authenticator(ctx, bus, "streamfuse.capture.text.auth")
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = LINGER_MS
        try:
            bind_receiver(self.sock, endpoint, bus)
        except BaseException:
            self.close()
            raise
        self.endpoint = endpoint

    def read(self, timeout_s: float) -> list[Item] | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return []
        parts = self.sock.recv_multipart(copy=False)
        size = sum(len(p.buffer) for p in parts)
        if self.max_bytes is not None and size > self.max_bytes:
            # The bus's size limit is per part: refuse before joining N of them into one copy.
            return [Item(Rejected("too_large", f"message is {size} bytes in {len(parts)} "
                                               f"parts, the limit is {self.max_bytes}"),
                         self.origin)]
        return [Item(b"".join(p.buffer for p in parts), self.origin)]

    def reply(self, answer: str) -> None:
        self.sock.send(answer.encode())

    def close(self) -> None:
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        p = ipc_path(getattr(self, "endpoint", ""))
        if p is not None:
            p.unlink(missing_ok=True)


class StreamInput:
    """Lines from a file descriptor (stdin or a FIFO)."""

    def __init__(self, fd: int, origin: str, max_bytes: int) -> None:
        self.fd = fd
        self.origin = origin
        self.lines = LineSplitter(max_bytes)

    def read(self, timeout_s: float) -> list[Item] | None:
        """New lines; None at end of input."""
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return []
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return []
        if not data:
            rest = self.lines.flush()
            return [Item(r, self.origin) for r in rest] if rest else None
        return [Item(r, self.origin) for r in self.lines.feed(data)]

    def reply(self, answer: str) -> None:
        return

    def close(self) -> None:
        return


class FifoInput(StreamInput):
    """A named pipe: created if missing, reopened each time its last writer closes."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        p = Path(path)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(p)
        elif not stat.S_ISFIFO(p.stat().st_mode):
            raise OSError(f"{path} exists and is not a FIFO")
        super().__init__(self._open(), "fifo", max_bytes)

    def _open(self) -> int:
        # Non-blocking, so opening does not wait for a writer.
        return os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def read(self, timeout_s: float) -> list[Item] | None:
        items = super().read(timeout_s)
        if items is None:
            # The last writer closed: flush what it left unterminated, then wait for the next.
            rest = [Item(r, self.origin) for r in self.lines.flush()]
            os.close(self.fd)
            self.fd = self._open()
            return rest
        return items

    def close(self) -> None:
        os.close(self.fd)


class FileInput:
    """Lines appended to a file, followed like ``tail -F`` (see :func:`follow_action`).

    The path must name a regular file (a directory, device or FIFO is refused at
    start; one that replaces the file later is waited out like a missing file), and
    one read hands out at most :data:`READ_BUDGET` bytes' worth of lines.
    """

    origin = "file"

    def __init__(self, path: str, max_bytes: int, stop: threading.Event) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.stop = stop
        self.f: int | None = None
        self.ino = 0
        self.pos = 0
        self.lines = LineSplitter(max_bytes)
        self._said: str | None = None  # the last reopen failure logged (once per kind)
        self._open(at_end=True)

    def _open(self, *, at_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file (file: follows a regular file; "
                          "use fifo:PATH for a named pipe)")
        self.f, self.ino = fd, st.st_ino
        self.pos = os.lseek(fd, 0, os.SEEK_END) if at_end else 0
        self.lines = LineSplitter(self.max_bytes)

    def _reopen(self) -> None:
        """Open the path from its start; what it names now may not be readable (yet)."""
        try:
            self._open(at_end=False)
        except OSError as e:
            if str(e) != self._said:
                self._said = str(e)
                log.warning("text: cannot follow %s (waiting for a readable file): %s",
                            self.path, e)
            return
        self._said = None

    def _drain(self) -> tuple[list[bytes | Rejected], bool]:
        """Lines read from the open file, and whether more is left than one read's budget."""
        out: list[bytes | Rejected] = []
        if self.f is None:
            return out, False
        budget = READ_BUDGET
        while budget > 0:
            data = os.pread(self.f, min(READ_CHUNK, budget), self.pos)
            if not data:
                return out, False
            self.pos += len(data)
            budget -= len(data)
            out += self.lines.feed(data)
        return out, True

    def read(self, timeout_s: float) -> list[Item] | None:
        if self.stop.wait(min(timeout_s, FILE_POLL_S)):
            return []
        if self.f is None:
            self._reopen()  # created after we started (or after a rotation): read it all
            raws, _ = self._drain()
        else:
            raws, more = self._drain()
            if not more:  # at the end of the open file: has the path moved on?
                raws += self._follow()
        return [Item(r, self.origin) for r in raws]

    def _follow(self) -> list[bytes | Rejected]:
        try:
            st = os.stat(self.path)
            path_ino, path_size = st.st_ino, st.st_size
        except OSError:  # gone, or not reachable now (a symlink loop, a lost directory)
            path_ino, path_size = None, 0
        action = follow_action(self.pos, self.ino, path_ino, path_size)
        raws: list[bytes | Rejected] = []
        if action == "rotated":
            raws, more = self._drain()
            if more:  # still written to after the rename: finish it first
                return raws
            raws += self.lines.flush()
            assert self.f is not None
            os.close(self.f)
            self.f = None
            self._reopen()
            raws += self._drain()[0]
        elif action == "truncated":
            raws = self.lines.flush()
            self.pos = 0
            self.lines = LineSplitter(self.max_bytes)
            raws += self._drain()[0]
        return raws

    def reply(self, answer: str) -> None:
        return

    def close(self) -> None:
        if self.f is not None:
            os.close(self.f)
            self.f = None


# ----------------------------------------------------------------------------- the node


Input = ZmqInput | StreamInput | FileInput


class TextCapture:
    """Read the configured input, publish texts and heartbeats until ``stop``."""

    def __init__(self, source: str, cfg: TextConfig, bus: BusConfig, *,
                 grid: tuple[int, int] | None = None) -> None:
        self.source = source
        self.cfg = cfg
        self.bus = bus
        self.grid = grid  # (window_ns, hop_ns): heartbeats also go just after each window end
        self.pub: StreamPublisher | None = None
        self._last_reject_log: dict[str, int] = {}

    def open_input(self, ctx: zmq.Context, stop: threading.Event) -> Input:
        kind, _, arg = self.cfg.input.partition(":")
        if kind == "zmq":
            return ZmqInput(ctx, text_endpoint(self.cfg, self.bus, self.source), self.bus,
                            self.cfg.max_bytes)
        if kind == "stdin":
            return StreamInput(sys.stdin.fileno(), "stdin", self.cfg.max_bytes)
        if kind == "fifo":
            return FifoInput(arg, self.cfg.max_bytes)
        return FileInput(arg, self.cfg.max_bytes, stop)

    def run(self, stop: threading.Event, *, ctx: zmq.Context | None = None) -> int:
        with Runtime(ctx) as rt:
            sock = rt.open(None, lambda c: connect_pub(c, self.bus), linger=LINGER_MS)
            self.pub = pub = StreamPublisher(sock, self.source, "text")
            try:
                inp = self.open_input(rt.ctx, stop)
            except OPEN_ERRORS as e:
                log.error("text %s: cannot open input %s: %s", self.source, self.cfg.input, e)
                return EXIT_CANNOT_OPEN
            try:
                where = f" at {inp.endpoint}" if isinstance(inp, ZmqInput) else ""
                log.info("text %s: reading %s%s", self.source, self.cfg.input, where)
                rt.ready()
                self._loop(stop, pub, inp)
            finally:
                inp.close()
        log.info("text %s stopped: %s", self.source, pub.counts.line())
        return 0

    def _loop(self, stop: threading.Event, pub: StreamPublisher, inp: Input) -> None:
        hb = Heartbeats(round(self.cfg.heartbeat_ms * clock.NS_PER_MS), self.grid)
        while not stop.is_set():
            now = clock.now_ns()
            if hb.due(now):
                pub.heartbeat(now)
                hb.sent(now)
            items = inp.read(hb.wait_s(clock.now_ns()))
            if items is None:
                log.info("text %s: end of input", self.source)
                return
            for item in items:
                answer = self._handle(pub, item)
                inp.reply(answer)
                if answer == "ok" and pub.last_t_ns is not None:
                    # the watermark this text promised (its receive time), not a later clock
                    # read: a window end between the two still gets its heartbeat
                    hb.sent(pub.last_t_ns)

    def _handle(self, pub: StreamPublisher, item: Item) -> str:
        t_ns = clock.now_ns()
        try:
            if isinstance(item.raw, Rejected):
                raise item.raw
            text = validate(item.raw, self.cfg.max_bytes)
        except Rejected as e:
            pub.drop(e.reason)
            last = self._last_reject_log.get(e.reason)
            if last is None or t_ns - last >= REJECT_LOG_EVERY_NS:
                self._last_reject_log[e.reason] = t_ns
                log.warning("text %s: rejected a message from %s: %s (%d rejected so far)",
                            self.source, item.origin, e, sum(pub.counts.dropped.values()))
            return f"rejected: {e}"
        pub.grabbed()
        sent = pub.send(lambda seq: codec.text_message(self.source, seq, t_ns, text,
                                                       origin=item.origin))
        return "ok" if sent else "rejected: hwm: the bus is not keeping up"


def main(source: str, cfg: TextConfig, bus: BusConfig, stop: threading.Event, *,
         grid: tuple[int, int] | None = None) -> int:
    return TextCapture(source, cfg, bus, grid=grid).run(stop)
