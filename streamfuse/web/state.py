"""What the console shows: the latest state of each source, kept from bus messages.

Pure core: no sockets, no clocks. The bus thread calls :meth:`ConsoleState.push`
for every message; the server reads views (small JSON-able dicts) and compares
``versions`` to see what changed. One lock guards both sides; every call holds it
for microseconds (the frame itself is kept as the received buffer, not copied).

Memory is bounded: the waveform keeps :data:`WAVE_NS` of per-block envelopes, the
timeline :data:`TIMELINE_NS` of answered windows, the text panel
:data:`TEXT_KEEP` messages, and a source's camera only its latest frame.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamfuse.clock import NS_PER_S as NS
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
_SCALE = {"int16": 32768.0, "int32": 2147483648.0}


@dataclass
class Frame:
    """A source's newest camera frame, as received (raw BGR or JPEG bytes)."""

    header: FrameHeader
    payload: bytes | memoryview


@dataclass
class SourceState:
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
    """Latest state per source; thread-safe (one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._sources: dict[str, SourceState] = {}
        self.ignored = 0  # messages of kinds the console does not show (heartbeats, ...)
        self.labels = LabelStream()  # every label message seen, as spans (the Teach page)

    def push(self, msg: Message) -> None:
        h = msg.header
        with self.lock:
            s = self._sources.get(h.source)
            if s is None:
                s = self._sources[h.source] = SourceState()
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
