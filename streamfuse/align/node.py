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
worker. Messages lost on the way in show as ``seq`` gaps per topic. Counters
go to Prometheus once a second from plain integers.
SIGTERM/SIGINT: exit 0 within one tick.

Entry points: :func:`cli` and :func:`main` ``(cfg, *, sub=None, push=None,
stop=None)``; tests inject sockets (injected sockets are not closed here).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections import Counter
from typing import Any

import zmq

from streamfuse import clock, metrics, readiness
from streamfuse.align.window import Aligner
from streamfuse.config import Config
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import Window
from streamfuse.wire.sockets import connect_sub, max_message_bytes, prepare_endpoint

log = logging.getLogger("streamfuse.align")

NODE = "align"
TICK_MS = 5
DRAIN_BATCH = 256  # messages per wake-up before the timer gets a turn
WINDOW_HWM = 64  # windows queued per worker (each may hold a few MB of frames)
METRICS_EVERY_NS = 1_000_000_000


class _Counts:
    """Plain-integer counters, turned into Prometheus increments once a second."""

    def __init__(self, al: Aligner) -> None:
        self.al = al
        self.messages_in: Counter[str] = Counter()
        self.decode_errors: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        self.unsent: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()  # messages missing by seq, per topic
        self.last_seq: dict[str, int] = {}
        self._seen: dict[str, Counter[Any]] = {}

    def seq(self, topic: str, seq: int) -> None:
        """Count messages lost on the way (a topic's data and heartbeats share one
        counter); a smaller seq is a restarted capture, not a loss."""
        last = self.last_seq.get(topic)
        if last is not None and seq > last + 1:
            self.gaps[topic] += seq - last - 1
        self.last_seq[topic] = seq

    def _delta(self, name: str, now: Counter[Any]) -> dict[Any, int]:
        before = self._seen.setdefault(name, Counter())
        out = {k: v - before[k] for k, v in now.items() if v != before[k]}
        self._seen[name] = Counter(now)
        return out

    def flush(self) -> None:
        s = self.al.stats
        for topic, n in self._delta("in", self.messages_in).items():
            metrics.messages_in.labels(node=NODE, topic=topic).inc(n)
        for (topic, reason), n in self._delta("decode", self.decode_errors).items():
            metrics.dropped.labels(node=NODE, topic=topic, reason=reason).inc(n)
        for (src, stream, reason), n in self._delta("rejected", s.rejected).items():
            metrics.dropped.labels(node=NODE, topic=topics.topic(src, stream), reason=reason).inc(n)
        for topic, n in self._delta("unsent", self.unsent).items():
            metrics.dropped.labels(node=NODE, topic=topic, reason="no_worker").inc(n)
        for topic, n in self._delta("gaps", self.gaps).items():
            metrics.seq_gaps.labels(node=NODE, topic=topic).inc(n)
        for topic, n in self._delta("sent", self.sent).items():
            metrics.messages_out.labels(node=NODE, topic=topic).inc(n)
        for src, n in self._delta("windows", s.windows).items():
            metrics.windows.labels(source=src).inc(n)
        for (src, stream), n in self._delta("absent", s.absent).items():
            metrics.windows_absent.labels(source=src, stream=stream).inc(n)
        for (src, stream), n in self._delta("late", s.late).items():
            metrics.late.labels(source=src, stream=stream).inc(n)


def _send(push: zmq.Socket, windows: list[Window], counts: _Counts) -> None:
    for w in windows:
        w.emit_ns = clock.now_ns()
        topic = topics.topic(w.source, topics.WINDOW_STREAM)
        try:
            push.send_multipart(codec.encode_window(w), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            counts.unsent[topic] += 1
            continue
        counts.sent[topic] += 1
        if w.audio is not None:
            metrics.audio_coverage.labels(source=w.source).observe(w.audio_coverage)


def _push_socket(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    prepare_endpoint(cfg.align.output)
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 500
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
    ctx = zmq.Context() if (sub is None or push is None) else None
    own_sub, own_push = sub is None, push is None
    try:
        if push is None:
            push = _push_socket(ctx, cfg)  # type: ignore[arg-type]
        if sub is None:
            sub = connect_sub(ctx, cfg.bus, subscriptions(cfg))  # type: ignore[arg-type]
    except BaseException as e:  # noqa: BLE001 - close what was opened, then report or re-raise
        for sock, own in ((sub, own_sub), (push, own_push)):
            if sock is not None and own:
                sock.close(linger=0)
        if ctx is not None:
            ctx.destroy(linger=0)  # also a socket connect_sub made before it raised
        if isinstance(e, (zmq.ZMQError, OSError)):
            log.error("cannot open %s or %s: %s", cfg.align.output, cfg.bus.output, e)
            return 1
        raise  # a ConfigError (exit 2) or an interrupt
    al = make_aligner(cfg)
    counts = _Counts(al)
    max_bytes = max_message_bytes(cfg.bus)
    tick_ns = TICK_MS * 1_000_000
    log.info("aligner up: %s from %s, windows to %s (window %d ms, hop %d ms, lateness %d ms, required %s)",
             ", ".join(subscriptions(cfg)) or "everything", cfg.bus.output, cfg.align.output,
             cfg.align.window_ms, cfg.align.hop_ms, cfg.align.max_lateness_ms, ",".join(cfg.align.required))
    readiness.report("ready")
    next_tick = clock.now_ns() + tick_ns
    next_metrics = clock.now_ns() + METRICS_EVERY_NS
    try:
        while not stop.is_set():
            if sub.poll(TICK_MS):
                for _ in range(DRAIN_BATCH):
                    try:
                        parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    recv = clock.now_ns()
                    try:
                        msg = codec.decode(parts, max_bytes=max_bytes)
                    except codec.DecodeError as e:
                        counts.decode_errors[(_topic_of(parts), e.reason)] += 1
                        continue
                    counts.messages_in[msg.topic] += 1
                    counts.seq(msg.topic, msg.header.seq)
                    al.push(msg, recv)
                    ready = al.pop_ready(recv)
                    if ready:
                        _send(push, ready, counts)
            now = clock.now_ns()
            if now >= next_tick:
                next_tick = now + tick_ns
                ready = al.pop_ready(now)
                if ready:
                    _send(push, ready, counts)
            if now >= next_metrics:
                next_metrics = now + METRICS_EVERY_NS
                counts.flush()
        counts.flush()
        st = al.stats
        log.info("aligner stopped: %d windows sent, %d not taken by any worker, %d messages lost "
                 "on the way (seq gaps), %d late, %d rejected", sum(counts.sent.values()),
                 sum(counts.unsent.values()), sum(counts.gaps.values()), sum(st.late.values()),
                 sum(st.rejected.values()))
        return 0
    finally:
        if own_sub:
            sub.close(linger=0)
        if own_push:
            push.close(linger=500)  # bounded: queued windows get out, a gone worker can't hang us
        if ctx is not None:
            ctx.term()


def _topic_of(parts: list[Any]) -> str:
    """The topic of an undecodable message, for its counter label (or ``?``)."""
    try:
        t = bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]).decode("utf-8")
        topics.split(t)
        return t
    except (UnicodeDecodeError, ValueError, IndexError, TypeError):
        return "?"


def cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse align [--config F]``."""
    from streamfuse.signals import Signals

    signals = Signals()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and cfg.metrics.listen:
        try:
            metrics.serve(cfg.metrics.listen)
        except OSError as e:
            log.warning("metrics not served on %s: %s", cfg.metrics.listen, e)
    return main(cfg, stop=signals.stop)
