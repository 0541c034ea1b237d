"""The live protocol: console state fanned out to browsers over WebSocket, latest wins.

Server -> browser, on ``/ws``:

- text ``{"t": "hello", "max_fps": F}`` once, then text ``{"t": "update", "sources":
  {name: {"audio": ..., "text": [...], "class": {...}, "timeline": {...}}}}`` holding only
  the panels that changed, with ``"gone": [name, ...]`` when sources the browser shows were
  evicted (:data:`~streamfuse.web.state.MAX_PANELS`; remove their panels first) and
  ``"hidden": N`` when N sources were not shown for want of room;
- binary frames: a 2-byte big-endian length, that many bytes of UTF-8 JSON
  (``source``, ``seq``, ``t_ns``, ``width``, ``height``), then a JPEG.

Browser -> server: the text ``a`` (ack) for every message it has handled.

Flow control: a browser has at most :data:`WINDOW` unacknowledged messages. While it is at
the limit nothing more is sent to it; each panel keeps only its newest state, and a panel
that changes again before the browser took the previous change counts one drop
(``streamfuse_web_dropped_total{kind}``). So a slow browser gets fewer frames, and the
memory held for it stays one pending update per panel, whatever it does. What is kept per
browser is keyed by the state's sources and dropped with them (:meth:`Client.sync`), so it
is bounded by :data:`~streamfuse.web.state.MAX_PANELS` too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any, Protocol

from streamfuse import clock, metrics
from streamfuse.clock import NS_PER_S
from streamfuse.web.frames import preview_jpeg
from streamfuse.web.state import ConsoleState

log = logging.getLogger("streamfuse.web")
WINDOW = 4  # messages in flight per browser
PANELS = ("audio", "text", "class")
METRICS_EVERY_NS = NS_PER_S


class Socket(Protocol):
    async def send_text(self, data: str) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...


class Client:
    """One browser: what it has seen, what is pending for it, how much is in flight."""

    def __init__(self, ws: Socket) -> None:
        self.ws = ws
        self.seen: dict[tuple[str, str], int] = {}
        self.dirty: set[tuple[str, str]] = set()  # (source, panel) changed since last sent
        self.frames: dict[str, bytes] = {}  # source -> encoded frame message not yet sent
        self.frame_seen: dict[str, int] = {}
        self.cursors: dict[str, tuple[int, int]] = {}  # source -> (timeline epoch, last idx)
        self.gens: dict[str, int] = {}  # source -> the panel generation the entries above are of
        self.shown: set[str] = set()  # sources this browser was sent something of
        self.gone: set[str] = set()  # of those, evicted since the last update
        self.hidden = self.hidden_sent = 0  # sources the state does not show: to send, sent
        self.in_flight = 0
        self.wake = asyncio.Event()

    def ack(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.wake.set()

    def sync(self, gens: dict[str, int]) -> None:
        """Forget what is kept for sources no longer in the state (``gens``: each kept
        source's panel generation), or kept since as a new panel."""
        for source, gen in gens.items():
            old = self.gens.get(source)
            if old != gen:
                if old is not None:
                    self._drop(source)
                self.gens[source] = gen
        # Frames are handed out between two syncs: a source may have one and be gone already.
        stale = [s for s in self.gens if s not in gens]
        stale += [s for s in self.frame_seen if s not in gens and s not in self.gens]
        for source in stale:
            self.gens.pop(source, None)
            self._drop(source)

    def _drop(self, source: str) -> None:
        for panel in PANELS:
            self.seen.pop((source, panel), None)
            self.dirty.discard((source, panel))
        self.frames.pop(source, None)
        self.frame_seen.pop(source, None)
        self.cursors.pop(source, None)
        if source in self.shown:
            self.shown.discard(source)
            self.gone.add(source)
            self.wake.set()

    def _update(self, state: ConsoleState) -> str:
        out: dict[str, dict[str, Any]] = {}
        for source, panel in sorted(self.dirty):
            entry = out.setdefault(source, {})
            entry[panel] = state.view(source, panel)
            if panel == "class":
                epoch, idx = self.cursors.get(source, (-1, -1))
                tl = state.timeline_since(source, epoch, idx)
                self.cursors[source] = (tl["epoch"], tl["next"])
                entry["timeline"] = {"reset": tl["reset"], "add": tl["add"]}
        self.dirty.clear()
        msg: dict[str, Any] = {"t": "update", "sources": out}
        if self.gone:
            msg["gone"] = sorted(self.gone)
            self.gone.clear()
        if self.hidden:
            msg["hidden"] = self.hidden_sent = self.hidden
        self.shown.update(out)
        return json.dumps(msg, separators=(",", ":"))

    async def pump(self, state: ConsoleState, sent: Counter[str]) -> None:
        """Send what is pending, within the window, until cancelled."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.in_flight < WINDOW and (self.dirty or self.gone or self.frames
                                               or self.hidden != self.hidden_sent):
                self.in_flight += 1
                if self.dirty or self.gone or self.hidden != self.hidden_sent:
                    kinds = {p for _, p in self.dirty}
                    text = self._update(state)
                    await self.ws.send_text(text)
                    sent.update(kinds)
                else:
                    source = next(iter(self.frames))
                    self.shown.add(source)
                    await self.ws.send_bytes(self.frames.pop(source))
                    sent["frame"] += 1


def frame_message(meta: dict[str, Any], jpeg: bytes) -> bytes:
    head = json.dumps(meta, separators=(",", ":")).encode()
    return len(head).to_bytes(2, "big") + head + jpeg


class Hub:
    """Marks what changed for every browser, ``1 / tick`` times a second; encodes frames.

    A source's frame is encoded once (for all browsers) at most ``max_fps`` times a
    second, and only while a browser is connected.
    """

    def __init__(self, state: ConsoleState, max_fps: float) -> None:
        self.state = state
        self.max_fps = max_fps
        self.tick_s = max(0.02, min(0.1, 0.5 / max_fps))
        self.clients: set[Client] = set()
        self.dropped: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._next_frame_ns: dict[str, int] = {}
        self._flushed: dict[str, Counter[str]] = {"dropped": Counter(), "sent": Counter()}
        self._hidden_flushed = 0
        self._next_metrics_ns = 0

    def hello(self) -> str:
        return json.dumps({"t": "hello", "max_fps": self.max_fps})

    def mark(self) -> None:
        """Flag changed panels for every browser; a panel still pending is a drop.
        What is kept for sources the state evicted is dropped."""
        snap = self.state.snapshot()
        gens = {source: gen for source, (gen, _) in snap.items()}
        hidden = self.state.hidden
        for c in self.clients:
            c.sync(gens)
            if c.hidden != hidden:
                c.hidden = hidden
                c.wake.set()
        for source, (_, versions) in sorted(snap.items()):
            for c in self.clients:
                for panel in PANELS:
                    key = (source, panel)
                    v = versions[panel]
                    if v and c.seen.get(key) != v:
                        if key in c.dirty:
                            self.dropped[panel] += 1
                        c.seen[key] = v
                        c.dirty.add(key)
                        c.wake.set()

    async def frames(self, now_ns: int) -> None:
        """Encode each source's newest frame when due and hand it to every browser."""
        if not self.clients:
            return
        sources = self.state.sources()
        if len(self._next_frame_ns) >= len(sources):  # forget evicted sources
            kept = set(sources)
            self._next_frame_ns = {s: t for s, t in self._next_frame_ns.items() if s in kept}
        for source in sources:
            due = self._next_frame_ns.get(source, 0)
            if now_ns < due:
                continue
            version, frame = self.state.frame(source)
            if frame is None or all(c.frame_seen.get(source) == version for c in self.clients):
                continue
            # on schedule, from when the frame was due: ticks would otherwise round every
            # interval up to a whole number of ticks (5 fps with 0.1 s ticks came out at 4)
            interval = int(NS_PER_S / self.max_fps)
            self._next_frame_ns[source] = (due if now_ns - due < interval else now_ns) + interval
            enc = await asyncio.to_thread(preview_jpeg, frame.header, frame.payload)
            if enc is None:
                self.dropped["undecodable"] += 1
                continue
            jpeg, w, h = enc
            h_ = frame.header
            msg = frame_message({"source": source, "seq": h_.seq, "t_ns": h_.t_ns, "width": w,
                                 "height": h}, jpeg)
            for c in list(self.clients):
                if c.frame_seen.get(source) == version:
                    continue
                if source in c.frames:
                    self.dropped["frame"] += 1
                c.frame_seen[source] = version
                c.frames[source] = msg
                c.wake.set()

    def flush_metrics(self, now_ns: int) -> None:
        if now_ns < self._next_metrics_ns:
            return
        self._next_metrics_ns = now_ns + METRICS_EVERY_NS
        for name, counter, metric in (("dropped", self.dropped, metrics.web_dropped),
                                      ("sent", self.sent, metrics.web_updates)):
            before = self._flushed[name]
            for kind, n in counter.items():
                if n > before[kind]:
                    metric.labels(kind=kind).inc(n - before[kind])
            self._flushed[name] = Counter(counter)
        hidden = self.state.hidden
        if hidden > self._hidden_flushed:
            metrics.web_sources_hidden.inc(hidden - self._hidden_flushed)
            self._hidden_flushed = hidden
        metrics.web_clients.set(len(self.clients))

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            now = clock.monotonic_ns()
            self.mark()
            await self.frames(now)
            self.flush_metrics(now)
            await asyncio.sleep(self.tick_s)
