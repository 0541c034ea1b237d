"""``streamfuse replay``: publish recordings onto the bus (README.md, "Recordings").

Messages go to ``bus.input`` byte for byte, merged across files in ``t_ns``
order. Pacing: ``--rate R`` publishes message ``i`` at
``wall_start + (t_i - t_first) / R``; ``--max`` publishes as fast as the bus
takes it.

The socket is an **XPUB**, not a PUB: it talks to the broker's XSUB exactly
like a PUB, but (1) it receives the subscriptions the broker forwards, so
replay starts only once the connection is up and (normally) a subscriber is
listening -- the PUB slow-joiner problem that would silently lose the first
messages -- and (2) it supports ``XPUB_NODROP``: at the high-water mark a send
fails with EAGAIN instead of dropping, and replay waits and retries. Nothing
is ever dropped at the replay's socket.

Limits (ZeroMQ PUB/SUB semantics): backpressure reaches the broker, not the
subscribers. The broker's XPUB queues up to ``10 x bus.hwm`` messages per
subscriber and then drops for that subscriber, so that one slow consumer cannot
stall live capture. A subscriber slower than ``--max`` for longer than its
queues (its own ``rcvhwm`` + the broker's) loses messages; consumers that must
see everything at full speed read the files directly
(:func:`streamfuse.record.reader.read_messages`), or replay with ``--rate``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamfuse import clock
from streamfuse.config import Config
from streamfuse.frameplane.replay import ReplayPlane, replay_plane
from streamfuse.frameplane.writer import hold_ms
from streamfuse.node import Runtime
from streamfuse.progress import Progress
from streamfuse.record import reader
from streamfuse.wire import codec
from streamfuse.wire.sockets import LINGER_MS, connect_endpoint, send_parts

log = logging.getLogger("streamfuse.replay")

# Header fields holding absolute epoch times, shifted by --restamp.
TIME_FIELDS = ("t_ns", "t_start_ns", "t_end_ns", "close_ns", "emit_ns")
TIME_LIST_FIELDS = ("frame_t_ns", "text_t_ns")
CONNECT_TIMEOUT_NS = 10 * clock.NS_PER_S
SUBSCRIBER_WAIT_NS = 2 * clock.NS_PER_S

Parts = list[bytes | memoryview]


def restamp_header(header: bytes | memoryview, shift_ns: int) -> bytes:
    """Re-encode a MessagePack header with every absolute time shifted by
    ``shift_ns`` (zeros, meaning "unset", stay zero); other fields are kept."""
    h = msgspec.msgpack.decode(header)
    if not isinstance(h, dict):
        raise codec.DecodeError("header", "header is not a map")
    for k in TIME_FIELDS:
        if isinstance(h.get(k), int) and h[k] > 0:
            h[k] += shift_ns
    for k in TIME_LIST_FIELDS:
        if isinstance(h.get(k), list):
            h[k] = [t + shift_ns if isinstance(t, int) and t > 0 else t for t in h[k]]
    return msgspec.msgpack.encode(h)


@dataclass
class Plan:
    """What to replay. Offsets are seconds from the first message of all files."""

    paths: list[Path]
    rate: float | None = 1.0  # None = --max
    loop: bool = False
    start_s: float | None = None
    end_s: float | None = None
    topics: Sequence[str] | None = None
    restamp: bool = False


@dataclass
class Covered:
    """The recorded time the messages sent so far cover (passes of a loop follow each other)."""

    first_t_ns: int | None = None
    last_t_ns: int = 0

    def add(self, t_ns: int) -> None:
        if self.first_t_ns is None:
            self.first_t_ns = t_ns
        self.last_t_ns = t_ns

    @property
    def ns(self) -> int:
        return 0 if self.first_t_ns is None else self.last_t_ns - self.first_t_ns


@dataclass
class Stats:
    messages: int = 0
    bytes: int = 0
    loops: int = 0
    covered: Covered = field(default_factory=Covered)
    wall_ns: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def speed(self) -> float:
        """Recorded time covered / wall time taken (x real time)."""
        return self.covered.ns / self.wall_ns if self.wall_ns > 0 else 0.0


def _prefetch(it: Iterator[reader.Raw], out: deque[reader.Raw | None], cond: threading.Condition,
              done: threading.Event, max_items: int, failure: list[BaseException]) -> None:
    """Reader thread: decompress ahead of the sender (bounded), so pacing is not
    disturbed by chunk reads and reading overlaps sending."""
    try:
        for item in it:
            with cond:
                while len(out) >= max_items and not done.is_set():
                    cond.wait(0.1)
                if done.is_set():
                    return
                out.append(item)
                cond.notify_all()
    except BaseException as e:  # handed to the sender, which raises it
        failure.append(e)
    finally:
        with cond:
            out.append(None)
            cond.notify_all()


def _prefetched(it: Iterator[reader.Raw], max_items: int = 64) -> Iterator[reader.Raw]:
    q: deque[reader.Raw | None] = deque()
    cond = threading.Condition()
    done = threading.Event()
    failure: list[BaseException] = []
    t = threading.Thread(target=_prefetch, name="replay-read",
                         args=(it, q, cond, done, max_items, failure))
    t.start()
    try:
        while True:
            with cond:
                while not q:
                    cond.wait(0.1)
                item = q.popleft()
                cond.notify_all()
            if item is None:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        done.set()  # the sender stopped early or finished: let the reader go
        with cond:
            cond.notify_all()
        t.join(5)


def _first_sendable(paths: Sequence[Path], errors: Counter[str]) -> int | None:
    """``t_ns`` of the first message of ``paths`` that a decoder accepts, the one replay
    sends first; None when there is none (what was skipped is then counted in ``errors``).

    A recording may hold messages no decoder accepts: the recorder files what it cannot
    decode (a publisher's ``t_ns = 1``), and other programs' channels have times of their
    own. Paced from such a time, replay would wait decades before its first message."""
    skipped: Counter[str] = Counter()
    for _topic, t_ns, parts in reader.read_raw(paths, errors=skipped):
        try:
            codec.decode(parts)
        except codec.DecodeError as e:
            skipped[e.reason] += 1
            continue
        return t_ns
    errors.update(skipped)
    return None


def run(plan: Plan, send: Callable[[Parts], bool], *, stop: threading.Event,
        now_ns: Callable[[], int] = clock.now_ns,
        sleep_until: Callable[[int], None] = clock.sleep_until_ns,
        progress: Callable[[Stats, int], None] | None = None) -> Stats:
    """Replay ``plan`` through ``send(parts) -> bool`` (False = stopped).

    Pacing uses ``now_ns``/``sleep_until`` so tests can drive it with a fake clock.
    """
    stats = Stats()
    rng = reader.time_range(plan.paths)
    t0 = _first_sendable(plan.paths, stats.errors) if rng is not None else None
    if rng is None or t0 is None:
        return stats
    # The summaries' range holds every record, also those replay does not send (times no
    # decoder accepts, another program's channels): only the first sendable one and the
    # accepted range may set the pace.
    t_last = max(t0, min(rng[1], codec.T_MAX_NS - 1))
    start_ns = t0 + round(plan.start_s * clock.NS_PER_S) if plan.start_s is not None else None
    end_ns = t0 + round(plan.end_s * clock.NS_PER_S) if plan.end_s is not None else None
    first = start_ns if start_ns is not None else t0
    span = (min(end_ns, t_last + 1) if end_ns is not None else t_last + 1) - first
    wall0: int | None = None  # the wall instant `first` maps to: set once data is ready
    loop_shift = 0  # recorded-time offset of the current loop
    while not stop.is_set():
        n_loop = 0
        last_t = first
        items = reader.read_raw(plan.paths, topics=plan.topics, start_ns=start_ns, end_ns=end_ns,
                                errors=stats.errors)
        for _topic, t_ns, parts in _prefetched(items):
            if stop.is_set():
                break
            try:
                codec.decode(parts)
            except codec.DecodeError as e:
                stats.errors[e.reason] += 1
                continue
            if wall0 is None:
                wall0 = now_ns()  # after the first chunk is read, so it does not delay the start
            if plan.rate is not None:
                sleep_until(wall0 + round((t_ns - first + loop_shift) / plan.rate))
            if plan.restamp:
                parts[1] = restamp_header(parts[1], wall0 - first + loop_shift)
            if not send(parts):
                break
            stats.covered.add(t_ns + loop_shift)
            stats.messages += 1
            n_loop += 1
            last_t = max(last_t, t_ns)
            stats.bytes += sum(len(p) for p in parts)
            if progress is not None:
                progress(stats, span)
        stats.loops += 1
        if not plan.loop or n_loop == 0:
            break
        # The next pass follows the last message sent after one mean gap.
        period = last_t + 1 - first
        loop_shift += period + max(clock.NS_PER_MS, period // max(n_loop, 1))
    stats.wall_ns = now_ns() - wall0 if wall0 is not None else 0
    return stats


# ----------------------------------------------------------------------------- the node


MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED


def _wait_connected(sock: zmq.Socket, mon: zmq.Socket, endpoint: str,
                    stop: threading.Event) -> bool:
    """Wait for the connection to the broker (``mon``: a monitor of ``sock``
    attached before it connected), then briefly for a subscription: the broker's
    XSUB forwards its subscribers' subscriptions to a new publisher as soon as
    it attaches, so one arriving means messages from now on are delivered."""
    try:
        deadline = clock.monotonic_ns() + CONNECT_TIMEOUT_NS
        connected = False
        while not connected and not stop.is_set():
            if clock.monotonic_ns() > deadline:
                return False
            if mon.poll(100):
                ev = recv_monitor_message(mon)
                connected = ev["event"] in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_CONNECTED)
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
    deadline = clock.monotonic_ns() + SUBSCRIBER_WAIT_NS
    while not stop.is_set() and clock.monotonic_ns() < deadline:
        if sock.poll(50, zmq.POLLIN):
            sub = sock.recv()
            if sub[:1] == b"\x01":
                return True
    log.warning("no subscriber on %s after %.0f s: publishing anyway",
                endpoint, SUBSCRIBER_WAIT_NS / clock.NS_PER_S)
    return True


def _sender(sock: zmq.Socket, stop: threading.Event) -> Callable[[Parts], bool]:
    def send(parts: Parts) -> bool:
        while True:
            try:
                send_parts(sock, parts, zmq.NOBLOCK)
                return True
            except zmq.Again:
                # XPUB_NODROP: the queue to the broker is full -- wait, never drop.
                if stop.is_set():
                    return False
                events = sock.poll(100, zmq.POLLOUT | zmq.POLLIN)
                if events & zmq.POLLIN:
                    sock.recv(zmq.NOBLOCK)  # a (un)subscription: nothing to do
    return send


def _interruptible_sleep(stop: threading.Event) -> Callable[[int], None]:
    """Pacing that a SIGTERM cuts short (a long gap in a recording must not delay the stop)."""

    def sleep_until(deadline_ns: int) -> None:
        remaining = deadline_ns - clock.now_ns()
        if remaining > 2 * clock.NS_PER_MS:
            stop.wait((remaining - clock.NS_PER_MS) / clock.NS_PER_S)
        if not stop.is_set():
            clock.sleep_until_ns(deadline_ns)  # the last millisecond precisely

    return sleep_until


def _progress(loop: bool) -> tuple[Callable[[Stats, int], None], Progress]:
    """A ``progress`` callback for :func:`run`, in seconds of recording replayed (of the
    whole replay; with ``--loop`` there is no end, so no total and no time left)."""
    bar = Progress("replay", None, unit="s", decimals=1)

    def show(st: Stats, span: int) -> None:
        if bar.total is None and not loop:
            bar.set_total(round(span / clock.NS_PER_S, 1))
        bar.set_note(f"{st.messages} messages" + (f", pass {st.loops + 1}" if loop else ""))
        bar.advance_to(st.covered.ns / clock.NS_PER_S)

    return show, bar


def _log_stats(stats: Stats) -> None:
    skipped = sum(stats.errors.values())
    log.info("replayed %d messages (%.1f MB, %d pass(es)) in %.2f s: %.1fx real time%s",
             stats.messages, stats.bytes / 1e6, stats.loops, stats.wall_ns / clock.NS_PER_S,
             stats.speed,
             f"; skipped {skipped} undecodable {dict(stats.errors)}" if skipped else "")


def _close_plane(plane: ReplayPlane | None, cfg: Config, stop: threading.Event) -> None:
    """The last frames must outlive the windows that show them (they close up to
    max_lateness_ms later, then queue for a worker), as they would in a ring that kept
    running; a reader that mapped a ring keeps it after the unlink."""
    if plane is None:
        return
    if plane.writers and not stop.is_set():
        stop.wait(hold_ms(cfg.align) / 1000)
    plane.close()


class BusUnreachable(Exception):
    """The broker did not take the connection (``bus.input``)."""


def main(cfg: Config, plan: Plan, *, stop: threading.Event) -> None:
    """Publish ``plan`` onto ``bus.input`` until it ends or ``stop`` is set. Raises
    :class:`BusUnreachable`, or :class:`~streamfuse.record.reader.RecordingError` for a
    file that turns out unreadable on the way."""
    plane = replay_plane(cfg.bus, cfg.align, plan.rate)
    try:
        # Let queued messages reach the broker before closing (bounded by linger).
        with Runtime() as rt:
            sock = rt.open(None, lambda ctx: _publisher(ctx, cfg),
                           linger=max(LINGER_MS, 5000))
            # before connecting, so no event is missed
            mon = rt.open(None, lambda _: sock.get_monitor_socket(MONITOR_EVENTS))
            try:
                _publish(cfg, plan, sock, mon, plane, stop)
            except BaseException:
                rt.abort()  # nothing more to deliver
                raise
    finally:
        _close_plane(plane, cfg, stop)


def _publisher(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)
    sock.linger = LINGER_MS
    sock.sndhwm = cfg.bus.hwm
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    return sock


def _publish(cfg: Config, plan: Plan, sock: zmq.Socket, mon: zmq.Socket,
             plane: ReplayPlane | None, stop: threading.Event) -> None:
    connect_endpoint(sock, cfg.bus.input, cfg.bus)
    if not _wait_connected(sock, mon, cfg.bus.input, stop):
        raise BusUnreachable(f"cannot reach the bus at {cfg.bus.input} "
                             "(is the broker running?)")
    progress, bar = _progress(plan.loop)
    send = _sender(sock, stop)
    with bar:
        stats = run(plan, plane.wrap(send) if plane else send, stop=stop,
                    progress=progress, sleep_until=_interruptible_sleep(stop))
    _log_stats(stats)
