"""``streamfuse align``: the aligner process (docs/architecture.md).

A short loop around the pure :class:`~streamfuse.align.window.Aligner`:
SUBscribe to ``<source>/video|audio|text`` on ``bus.output`` (every source when
none is configured), push each decoded message with its arrival time, and
PUSH each window that closes to the fusion workers on ``align.output`` (bound
here), frames and audio as zero-copy buffers. Windows are collected after
every message and every ``TICK_MS`` (so a window closes on the lateness bound
even when nothing arrives).

A window that no worker can take at once (none connected, or all queues at
``WINDOW_HWM``) is dropped and counted: the aligner never stalls on a slow
worker. Messages lost on the way in show as ``seq`` gaps per topic; a ``seq``
that goes back (a restarted capture) or leaps more than ``SEQ_GAP_MAX`` ahead
counts as a reset, never as billions of lost messages. ``windows_total`` is
incremented before each window is sent, so it is never below what the workers
answered, even after a SIGKILL; the other counters go to Prometheus from plain
integers after every batch of windows and once a second. Whatever a publisher
sends is counted and logged (at most one line per topic and reason every
``LOG_EVERY_NS``); a resync of a source's timeline is logged as a warning.
SIGTERM/SIGINT: exit 0 within one tick.

Names a publisher invents cost bounded memory: counters and metric labels are
keyed by the aligner's :class:`~streamfuse.names.NameTable` (configured sources
and the first ``MAX_NAMES`` other source names by name, later ones as
``_other``), and the last ``seq`` is kept for the ``SEQ_TOPICS_MAX`` topics heard
from most recently.

Entry point: :func:`main` ``(cfg, *, sub=None, push=None, stop=None)``, which
:mod:`streamfuse.commands.align` runs; tests inject sockets (injected sockets are not
closed here).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import zmq

from streamfuse import clock, metrics
from streamfuse.align.window import Aligner, Resync
from streamfuse.config import Config
from streamfuse.logs import Throttled
from streamfuse.names import MAX_NAMES, put_recent
from streamfuse.node import EXIT_CANNOT_OPEN, OPEN_ERRORS, Every, Runtime, polling
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import Message, Window
from streamfuse.wire.sockets import LINGER_MS, connect_sub, max_message_bytes, prepare_endpoint

log = logging.getLogger("streamfuse.align")

NODE = "align"
TICK_MS = 5
DRAIN_BATCH = 256  # messages per wake-up before the timer gets a turn
WINDOW_HWM = 64  # windows queued per worker (each may hold a few MB of frames)
METRICS_EVERY_NS = clock.NS_PER_S
LOG_EVERY_NS = 10 * clock.NS_PER_S  # per topic and reason, for what publishers get wrong
SEQ_GAP_MAX = 100_000  # a larger seq leap is a reset: ~30 min of audio blocks, lost at once
# Topics whose last seq is kept (least recently heard dropped beyond): room for the three
# capture streams of every source with a name of its own. A topic dropped and heard again
# starts afresh (no gap counted), which only happens while more than this many topics
# talk, i.e. while a publisher invents names; a topic's seq cannot be folded.
SEQ_TOPICS_MAX = 4 * MAX_NAMES
_WHY = {"future": "stamped too far ahead of the source's clock",
        "past": "stamped too far behind the source's clock",
        "time": "stamped outside 2000-01-01..2200-01-01"}


class _Counts:
    """Plain-integer counters, turned into Prometheus increments by :meth:`flush`."""

    def __init__(self, al: Aligner) -> None:
        self.al = al
        self.names = al.names  # one key per source name, shared with al.stats
        self.messages_in: Counter[str] = Counter()
        self.decode_errors: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        self.unsent: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()  # messages missing by seq, per topic
        self.resets: Counter[str] = Counter()  # seq restarted or leapt, per topic
        self.last_seq: dict[str, int] = {}  # per topic, least recently heard first
        self.folded = 0  # names.folded already added to names_folded_total
        self.throttle = Throttled(log, LOG_EVERY_NS)
        self._seen: dict[str, Counter[Any]] = {}
        self._windows: dict[str, Any] = {}  # windows_total children, per source key

    def seq(self, topic: str, seq: int, now_ns: int, key: str | None = None) -> None:
        """Count messages lost on the way (a topic's data and heartbeats share one
        counter); a smaller seq, or one too far ahead to be a loss, is a reset.
        ``key``: the topic's counter key (default: ``topic`` with its source folded)."""
        last = put_recent(self.last_seq, topic, seq, SEQ_TOPICS_MAX)
        if last is None or last <= seq <= last + 1:
            return
        if key is None:
            key = self.names.topic(topic)
        if last < seq <= last + 1 + SEQ_GAP_MAX:
            self.gaps[key] += seq - last - 1
            return
        self.resets[key] += 1
        if seq > last:
            self.throttle.log(("seq", topic), now_ns, logging.WARNING,
                              "%s: seq leapt from %d to %d, counted as a reset, not as lost "
                              "messages", topic, last, seq)

    def window_sent(self, key: str) -> None:
        """Count a window of the source keyed ``key`` before it is sent: a SIGKILL can
        then never leave ``windows_total`` below the classifications of the windows
        that got out."""
        child = self._windows.get(key)
        if child is None:
            child = self._windows[key] = metrics.windows.labels(source=key)
        child.inc()

    def topic_key(self, msg: Message) -> str:
        """The counter key of a decoded message's topic (its source folded)."""
        h = msg.header
        key = self.names(h.source)
        return msg.topic if key == h.source else topics.topic(key, h.stream)

    def _delta(self, name: str, now: Counter[Any]) -> dict[Any, int]:
        before = self._seen.setdefault(name, Counter())
        out = {k: v - before[k] for k, v in now.items() if v != before[k]}
        if out:
            self._seen[name] = Counter(now)
        return out

    def flush(self, now_ns: int) -> None:
        s = self.al.stats
        for topic, n in self._delta("in", self.messages_in).items():
            metrics.messages_in.labels(node=NODE, topic=topic).inc(n)
        for (topic, reason), n in self._delta("decode", self.decode_errors).items():
            metrics.dropped.labels(node=NODE, topic=topic, reason=reason).inc(n)
        for (src, stream, reason), n in self._delta("rejected", s.rejected).items():
            topic = topics.topic(src, stream)
            metrics.dropped.labels(node=NODE, topic=topic, reason=reason).inc(n)
            self.throttle.log(("rejected", topic, reason), now_ns, logging.WARNING,
                              "%s: dropped %d message(s) %s", topic, n,
                              _WHY.get(reason, f"({reason})"))
        for topic, n in self._delta("unsent", self.unsent).items():
            metrics.dropped.labels(node=NODE, topic=topic, reason="no_worker").inc(n)
        for topic, n in self._delta("gaps", self.gaps).items():
            metrics.seq_gaps.labels(node=NODE, topic=topic).inc(n)
        for topic, n in self._delta("resets", self.resets).items():
            metrics.seq_resets.labels(node=NODE, topic=topic).inc(n)
        for topic, n in self._delta("sent", self.sent).items():
            metrics.messages_out.labels(node=NODE, topic=topic).inc(n)
        for src, n in self._delta("resyncs", s.resyncs).items():
            metrics.resyncs.labels(source=src).inc(n)
        for (src, stream), n in self._delta("absent", s.absent).items():
            metrics.windows_absent.labels(source=src, stream=stream).inc(n)
        for (src, stream), n in self._delta("late", s.late).items():
            metrics.late.labels(source=src, stream=stream).inc(n)
        if self.names.folded > self.folded:
            metrics.names_folded.labels(node=NODE).inc(self.names.folded - self.folded)
            self.folded = self.names.folded


def _send(push: zmq.Socket, windows: list[Window], counts: _Counts) -> None:
    for w in windows:
        w.emit_ns = clock.now_ns()
        key = counts.names(w.source)
        topic = topics.topic(key, topics.WINDOW_STREAM)
        counts.window_sent(key)
        try:
            push.send_multipart(codec.encode_window(w), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            counts.unsent[topic] += 1
            continue
        counts.sent[topic] += 1
        if w.audio is not None:
            metrics.audio_coverage.labels(source=key).observe(w.audio_coverage)
    counts.flush(clock.now_ns())


def _log_resyncs(events: list[Resync]) -> None:
    for ev in events:
        log.warning("%s: timeline moved by %+.3f s on sustained %s data; its open windows were "
                    "closed and no window it already answered will be answered again",
                    ev.source, (ev.to_ns - ev.from_ns) / clock.NS_PER_S, ev.stream)


def _push_socket(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    prepare_endpoint(cfg.align.output)
    sock = ctx.socket(zmq.PUSH)
    sock.linger = LINGER_MS
    sock.sndhwm = WINDOW_HWM
    try:
        sock.bind(cfg.align.output)
    except zmq.ZMQError:
        sock.close(linger=0)  # else the context could never terminate
        raise
    return sock


def subscriptions(cfg: Config) -> list[str]:
    """Topic prefixes: the capture streams of the configured sources, else everything."""
    names = [s.name for s in cfg.sources]
    return topics.capture_topics(names) if names else [""]


def make_aligner(cfg: Config) -> Aligner:
    """The aligner this node runs: configured sources only, at their sample rates."""
    names = [s.name for s in cfg.sources]
    rates = {s.name: s.audio.samplerate for s in cfg.sources if s.audio is not None}
    return Aligner(cfg.align, sources=names or None, samplerates=rates)


def main(cfg: Config, *, sub: zmq.Socket | None = None, push: zmq.Socket | None = None,
         stop: threading.Event | None = None) -> int:
    """Align until ``stop`` is set; returns the exit code."""
    stop = stop or threading.Event()
    with Runtime() as rt:
        try:
            # bounded linger: queued windows get out, a gone worker can't hang us
            push = rt.open(push, lambda ctx: _push_socket(ctx, cfg), linger=LINGER_MS)
            sub = rt.open(sub, lambda ctx: connect_sub(ctx, cfg.bus, subscriptions(cfg)))
        except OPEN_ERRORS as e:
            log.error("cannot open %s or %s: %s", cfg.align.output, cfg.bus.output, e)
            return EXIT_CANNOT_OPEN
        al = make_aligner(cfg)
        counts = _Counts(al)
        max_bytes = max_message_bytes(cfg.bus)
        log.info("aligner up: %s from %s, windows to %s "
                 "(window %d ms, hop %d ms, lateness %d ms, required %s)",
                 ", ".join(subscriptions(cfg)) or "everything", cfg.bus.output, cfg.align.output,
                 cfg.align.window_ms, cfg.align.hop_ms, cfg.align.max_lateness_ms,
                 ",".join(cfg.align.required))
        rt.ready()
        _loop(sub, push, al, counts, max_bytes=max_bytes, stop=stop)
        counts.flush(clock.now_ns())
        st = al.stats
        log.info("aligner stopped: %d windows sent, %d not taken by any worker, %d messages lost "
                 "on the way (seq gaps), %d seq resets, %d late, %d rejected, %d resyncs",
                 sum(counts.sent.values()), sum(counts.unsent.values()), sum(counts.gaps.values()),
                 sum(counts.resets.values()), sum(st.late.values()), sum(st.rejected.values()),
                 sum(st.resyncs.values()))
        return 0


def _loop(sub: zmq.Socket, push: zmq.Socket, al: Aligner, counts: _Counts, *, max_bytes: int,
          stop: threading.Event) -> None:
    """Receive, align and send until ``stop``; the timer closes windows when nothing arrives."""
    tick = Every(TICK_MS * clock.NS_PER_MS, clock.now_ns())
    flush = Every(METRICS_EVERY_NS, clock.now_ns())
    for readable in polling(sub, TICK_MS, stop):
        if readable:
            _drain(sub, push, al, counts, max_bytes)
        now = clock.now_ns()
        if tick.due(now):
            ready = al.pop_ready(now)
            if ready:
                _send(push, ready, counts)
        if flush.due(now):
            counts.flush(now)


def _drain(sub: zmq.Socket, push: zmq.Socket, al: Aligner, counts: _Counts,
           max_bytes: int) -> None:
    """Take up to ``DRAIN_BATCH`` waiting messages, sending what closes after each."""
    for _ in range(DRAIN_BATCH):
        try:
            parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        recv = clock.now_ns()
        try:
            msg = codec.decode(parts, max_bytes=max_bytes)
        except codec.DecodeError as e:
            topic = _topic_of(parts)
            key = topic if topic == "?" else counts.names.topic(topic)
            counts.decode_errors[(key, e.reason)] += 1
            counts.throttle.log(("decode", topic, e.reason), recv, logging.WARNING,
                                "%s: dropped a message: %s", topic, e)
            continue
        key = counts.topic_key(msg)
        counts.messages_in[key] += 1
        counts.seq(msg.topic, msg.header.seq, recv, key)
        al.push(msg, recv)
        if al.resync_events:
            _log_resyncs(al.take_resyncs())
        ready = al.pop_ready(recv)
        if ready:
            _send(push, ready, counts)


def _topic_of(parts: list[Any]) -> str:
    """The topic of an undecodable message, for its counter label (or ``?``)."""
    try:
        t = bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]).decode("utf-8")
        topics.split(t)
        return t
    except (UnicodeDecodeError, ValueError, IndexError, TypeError):
        return "?"
