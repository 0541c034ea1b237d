"""What the console shows: the latest state of each source, kept from bus messages.

Pure core: no sockets, no clocks. The bus thread calls :meth:`ConsoleState.push`
for every message; the server reads views (small JSON-able dicts) and compares
``versions`` to see what changed. One lock guards both sides; every call holds it
for microseconds (the frame itself is kept as the received buffer, not copied).

Memory is bounded: the waveform keeps :data:`WAVE_NS` of per-block envelopes, the
timeline :data:`TIMELINE_NS` of answered windows, the text panel
:data:`TEXT_KEEP` messages, and a source's camera only its latest frame.

The number of sources is bounded too, since any publisher may invent source names: at
most :data:`MAX_PANELS` are kept, the configured ``[[sources]]`` always among them. A
source silent for a long time keeps its panel (a dead camera must look dead, with its last
frame) until a new source needs the room: then the source silent the longest goes, never
a configured one and never one heard within :data:`ACTIVE_NS`. When every kept source is
configured or active, the new source is not shown and counted (:attr:`ConsoleState.hidden`).
Times are the caller's (``push(msg, now_ns)``, the local monotonic clock).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamfuse.clock import NS_PER_S as NS
from streamfuse.names import put_recent
from streamfuse.train.labels import OPEN_END_NS, LabelStream
from streamfuse.wire import topics
from streamfuse.wire.schema import (
    AudioHeader,
    ClassHeader,
    FrameHeader,
    LabelHeader,
    Message,
    TextHeader,
)

WAVE_NS = 5 * NS  # seconds of waveform on screen
LEVEL_NS = NS // 10  # the level meter shows the RMS of the newest 100 ms
WAVE_COLUMNS = 200
LABELS_KEPT = 1000  # labelled spans remembered per source for the Teach page
TIMELINE_NS = 180 * NS  # the label strip covers the last three minutes
REWIND_NS = 10 * NS  # a classification this much older than the newest starts a new timeline
TEXT_KEEP = 8
TEXT_CHARS = 500
TOP_CLASSES = 5
KINDS = ("frame", "audio", "text", "class")
# Sources with a panel. A panel holds up to ~1 MB (a raw VGA frame) plus its waveform,
# texts, timeline and labels, and each browser keeps a few entries and one pending JPEG
# (~30 KB) per panel: 64 panels stay near 64 MB whatever publishers invent. A daemon aligns
# a few sources (docs/benchmarks.md: 4 raw VGA sources without loss), and 64 panels are
# already far more than a page can usefully show, so real sources never compete for room.
MAX_PANELS = 64
# A source heard within this long is active: never evicted to make room for a new one.
ACTIVE_NS = 60 * NS
# Sources not shown remembered (least recent dropped first) so that one that keeps
# sending is counted once: ``hidden`` counts distinct names, approximately.
_RECENT_HIDDEN = 16 * MAX_PANELS
_NEVER = 1 << 126  # kept sources all configured: none is ever evictable
_SCALE = {"int16": 32768.0, "int32": 2147483648.0}

log = logging.getLogger("streamfuse.web")


@dataclass
class Frame:
    """A source's newest camera frame, as received (raw BGR or JPEG bytes)."""

    header: FrameHeader
    payload: bytes | memoryview


@dataclass
class SourceState:
    gen: int = 0  # unique per panel: a source evicted and seen again is a new panel
    heard_ns: int = 0  # the caller's clock when its newest message came
    frame: Frame | None = None
    # per audio block: t_ns, lowest and highest sample, RMS
    blocks: deque[tuple[int, float, float, float]] = field(default_factory=deque)
    samplerate: int = 0
    texts: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=TEXT_KEEP))
    cls: dict[str, Any] | None = None
    truth: dict[str, Any] | None = None
    timeline: deque[tuple[int, int, int, str]] = field(default_factory=deque)  # idx, t0, t1, label
    timeline_epoch: int = 0
    next_idx: int = 0
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


class ConsoleState:
    """Latest state per source, for at most :data:`MAX_PANELS` sources (more only when
    configured ones need the room); thread-safe (one lock). ``configured``: the
    ``[[sources]]`` names, always kept once seen."""

    def __init__(self, configured: Iterable[str] = ()) -> None:
        self.lock = threading.Lock()
        self.configured = frozenset(configured)
        self._sources: dict[str, SourceState] = {}
        self.ignored = 0  # messages of kinds the console does not show (heartbeats, ...)
        self.labels = LabelStream()  # label messages of kept sources, as spans (the Teach page)
        self.hidden = 0  # sources not shown: no room (distinct names, approximately)
        self.evicted = 0  # panels removed to make room for a new source
        self._hidden_recent: dict[str, bool] = {}
        self._log_at = 1  # the hidden count at which the next warning is logged
        self._now = 0  # the newest now_ns given
        self._no_victim_before = 0  # no unconfigured source can be evicted before this
        self._gen = itertools.count(1)

    def push(self, msg: Message, now_ns: int | None = None) -> None:
        """Take one bus message; ``now_ns``: the local clock (None: as the last call's)."""
        h = msg.header
        with self.lock:
            if now_ns is None or now_ns < self._now:
                now_ns = self._now
            self._now = now_ns
            s = self._sources.get(h.source)
            if s is None:
                s = self._admit(h.source, now_ns)
                if s is None:
                    return
            s.heard_ns = now_ns
            if isinstance(h, FrameHeader):
                s.frame = Frame(h, msg.payload[0])
                s.versions["frame"] += 1
            elif isinstance(h, AudioHeader):
                self._audio(s, msg, h)
            elif isinstance(h, TextHeader):
                s.texts.append((h.t_ns, msg.text()[:TEXT_CHARS]))
                s.versions["text"] += 1
            elif isinstance(h, ClassHeader) and topics.is_class_topic(msg.topic):
                self._class(s, msg, h)
            elif isinstance(h, LabelHeader):
                s.truth = {"label": h.label, "t_ns": h.t_ns, "t_end_ns": h.t_end_ns}
                s.versions["class"] += 1
                self.labels.push(h.source, h.t_ns, h.t_end_ns, h.label, stop=h.stop)
                del self.labels.spans[h.source][:-LABELS_KEPT]
            else:
                self.ignored += 1

    def _admit(self, name: str, now_ns: int) -> SourceState | None:
        """A panel for a new source, evicting the longest-silent one if there is no room;
        None: no room (every kept source configured or active), counted in ``hidden``."""
        if len(self._sources) >= MAX_PANELS:
            victim = self._victim(now_ns)
            if victim is not None:
                self._evict(victim)
            elif name not in self.configured:
                self._hide(name)
                return None
        self._hidden_recent.pop(name, None)
        s = self._sources[name] = SourceState(gen=next(self._gen))
        return s

    def _victim(self, now_ns: int) -> str | None:
        """The unconfigured source silent the longest, if silent for more than ``ACTIVE_NS``."""
        if now_ns < self._no_victim_before:
            return None  # heard_ns only grows: nothing can have become evictable yet
        oldest, heard = None, None
        for name, s in self._sources.items():
            if name not in self.configured and (heard is None or s.heard_ns < heard):
                oldest, heard = name, s.heard_ns
        if heard is None or now_ns - heard <= ACTIVE_NS:
            self._no_victim_before = _NEVER if heard is None else heard + ACTIVE_NS + 1
            return None
        return oldest

    def _evict(self, name: str) -> None:
        del self._sources[name]
        self.labels.spans.pop(name, None)
        self.labels.changed.discard(name)
        self.evicted += 1

    def _hide(self, name: str) -> None:
        if put_recent(self._hidden_recent, name, True, _RECENT_HIDDEN) is not None:
            return
        self.hidden += 1
        if self.hidden >= self._log_at:
            self._log_at = 2 * self.hidden
            log.warning("web: source %r not shown: %d sources have a panel, all configured or "
                        "heard within %d s (%d sources not shown so far)",
                        name, len(self._sources), ACTIVE_NS // NS, self.hidden)

    @staticmethod
    def _audio(s: SourceState, msg: Message, h: AudioHeader) -> None:
        a = msg.array()
        if a.size == 0:
            return
        x = a.astype(np.float32) / _SCALE.get(h.dtype, 1.0)
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        s.blocks.append((h.t_ns, float(x.min()), float(x.max()), rms))
        while s.blocks and s.blocks[0][0] < h.t_ns - WAVE_NS:
            s.blocks.popleft()
        s.samplerate = h.samplerate
        s.versions["audio"] += 1

    @staticmethod
    def _class(s: SourceState, msg: Message, h: ClassHeader) -> None:
        try:
            c = json.loads(msg.text())
        except ValueError:
            c = {}
        if not isinstance(c, dict):
            c = {}
        raw = c.get("scores")
        scores: dict[str, Any] = raw if isinstance(raw, dict) else {}
        numbers = ((float(v), str(k)) for k, v in scores.items() if isinstance(v, (int, float)))
        ranked = sorted(numbers, reverse=True)
        top = [[k, v] for v, k in ranked[:TOP_CLASSES]]
        s.cls = {"label": h.label or str(c.get("label", "")), "score": h.score, "scores": top,
                 "present": c.get("present", {}), "latency_ms": c.get("latency_ms", {}),
                 "model": c.get("model", ""), "t_start_ns": h.t_start_ns, "t_end_ns": h.t_ns}
        newest = s.timeline[-1][2] if s.timeline else None
        if newest is not None and h.t_ns < newest - REWIND_NS:
            s.timeline.clear()  # a replay started again from an earlier time
            s.timeline_epoch += 1
            newest = None
        s.timeline.append((s.next_idx, h.t_start_ns, h.t_ns, s.cls["label"]))
        s.next_idx += 1
        latest = max(h.t_ns, newest or 0)
        while s.timeline and s.timeline[0][2] < latest - TIMELINE_NS:
            s.timeline.popleft()
        s.versions["class"] += 1

    # ------------------------------------------------------------------ views

    def sources(self) -> list[str]:
        with self.lock:
            return sorted(self._sources)

    def label_spans(self, source: str, since_ns: int) -> list[dict[str, Any]]:
        """``source``'s labelled spans ending after ``since_ns``; ``end_ns`` None: still open."""
        with self.lock:
            spans = list(self.labels.spans.get(source, []))
        return [{"start_ns": sp.start_ns, "end_ns": None if sp.end_ns == OPEN_END_NS else sp.end_ns,
                 "label": sp.label} for sp in spans if sp.end_ns > since_ns]

    def snapshot(self) -> dict[str, tuple[int, dict[str, int]]]:
        """Every kept source's panel generation and versions, under one lock."""
        with self.lock:
            return {name: (s.gen, dict(s.versions)) for name, s in self._sources.items()}

    def versions(self, source: str) -> dict[str, int]:
        with self.lock:
            s = self._sources.get(source)
            return dict(s.versions) if s else dict.fromkeys(KINDS, 0)

    def frame(self, source: str) -> tuple[int, Frame | None]:
        with self.lock:
            s = self._sources.get(source)
            return (s.versions["frame"], s.frame) if s else (0, None)

    def view(self, source: str, kind: str) -> Any:
        """The JSON-able view of one panel: ``audio``, ``text`` or ``class``."""
        with self.lock:
            s = self._sources.get(source)
            if s is None:
                return None
            if kind == "audio":
                return _audio_view(s)
            if kind == "text":
                return [{"t_ns": t, "text": txt} for t, txt in s.texts]
            return {"current": s.cls, "truth": s.truth}

    def timeline_since(self, source: str, epoch: int, after_idx: int) -> dict[str, Any]:
        """Timeline entries newer than ``after_idx`` of ``epoch``; everything (``reset``) when the
        epoch differs. ``next`` is the cursor to pass next time."""
        with self.lock:
            s = self._sources.get(source)
            if s is None:
                return {"epoch": epoch, "reset": False, "add": [], "next": after_idx}
            reset = epoch != s.timeline_epoch
            add = [[t0, t1, label] for i, t0, t1, label in s.timeline if reset or i > after_idx]
            last = s.timeline[-1][0] if s.timeline else after_idx
            return {"epoch": s.timeline_epoch, "reset": reset, "add": add, "next": last}


def _audio_view(s: SourceState) -> dict[str, Any]:
    if not s.blocks:
        return {"level_db": None, "wave": [], "span_s": WAVE_NS / NS}
    newest = s.blocks[-1][0]
    recent = [b[3] for b in s.blocks if b[0] >= newest - LEVEL_NS]
    rms = math.sqrt(sum(r * r for r in recent) / len(recent))
    level = 20 * math.log10(rms) if rms > 1e-9 else -180.0
    blocks = list(s.blocks)
    step = max(1, math.ceil(len(blocks) / WAVE_COLUMNS))
    groups = [blocks[i:i + step] for i in range(0, len(blocks), step)]
    wave = [[round(min(b[1] for b in g), 4), round(max(b[2] for b in g), 4)] for g in groups]
    return {"level_db": round(level, 1), "wave": wave, "span_s": WAVE_NS / NS,
            "t_ns": newest, "samplerate": s.samplerate}
