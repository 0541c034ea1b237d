"""The live protocol: console state fanned out to browsers over WebSocket, latest wins.

Server -> browser, on ``/ws``:

- text ``{"t": "hello", "max_fps": F}`` once, then text ``{"t": "update", "sources":
  {name: {"audio": ..., "text": [...], "class": {...}, "timeline": {...}}}}`` holding only
  the panels that changed;
- binary frames: a 2-byte big-endian length, that many bytes of UTF-8 JSON
  (``source``, ``seq``, ``t_ns``, ``width``, ``height``), then a JPEG.

Browser -> server: the text ``a`` (ack) for every message it has handled.

Flow control: a browser has at most :data:`WINDOW` unacknowledged messages. While it is at
the limit nothing more is sent to it; each panel keeps only its newest state, and a panel
that changes again before the browser took the previous change counts one drop
(``streamfuse_web_dropped_total{kind}``). So a slow browser gets fewer frames, and the
memory held for it stays one pending update per panel, whatever it does.
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
        self.in_flight = 0
        self.wake = asyncio.Event()

    def ack(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
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
        return json.dumps({"t": "update", "sources": out}, separators=(",", ":"))

    async def pump(self, state: ConsoleState, sent: Counter[str]) -> None:
        """Send what is pending, within the window, until cancelled."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.in_flight < WINDOW and (self.dirty or self.frames):
                self.in_flight += 1
                if self.dirty:
                    kinds = {p for _, p in self.dirty}
                    text = self._update(state)
                    await self.ws.send_text(text)
                    sent.update(kinds)
                else:
                    source = next(iter(self.frames))
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
        self._next_metrics_ns = 0

    def hello(self) -> str:
        return json.dumps({"t": "hello", "max_fps": self.max_fps})

    def mark(self) -> None:
        """Flag changed panels for every browser; a panel still pending is a drop."""
        for source in self.state.sources():
            versions = self.state.versions(source)
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
        for source in self.state.sources():
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
        metrics.web_clients.set(len(self.clients))

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            now = clock.monotonic_ns()
            self.mark()
            await self.frames(now)
            self.flush_metrics(now)
            await asyncio.sleep(self.tick_s)
