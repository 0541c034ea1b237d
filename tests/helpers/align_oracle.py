"""A reference for the aligner's windows, written from the rules in
:mod:`streamfuse.align.window`'s docstring, not from its code: simple and slow.

For messages that each stream delivers in order and in time (nothing late, no
resync), every window of every source follows from the messages alone:

- windows are ``[k * hop, k * hop + window)``; ``seq = k``;
- video: for each of the ``n = frames_per_window`` instants
  ``start + (i + 0.5) * window / n``, the frame nearest to it among the frames in
  the window, ties to the earlier frame (so a frame repeats when there are fewer);
- audio: the ``window * samplerate`` samples of the window on the absolute sample
  grid (sample ``j`` is at ``j / samplerate`` s). A block starts on the sample
  nearest its stamp, or right where the previous block ended when its stamp is
  within 2 ms of that; where blocks overlap the first one keeps its samples; gaps
  are zeros, and ``audio_coverage`` is the fraction of the window's samples present;
- text: the newest ``max_text_messages`` text messages (not heartbeats) with
  ``t_ns`` in ``[end - text_context, end)``, oldest first;
- ``present`` says which of the three the window holds; a window holding none is
  not emitted.

Exact arithmetic throughout (:class:`fractions.Fraction`), every window built by
scanning every message: no buffers, no pruning, nothing shared with the
implementation. :func:`expected` gives the windows as tuples, :func:`content`
turns the aligner's :class:`Window` into the same tuple to compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from streamfuse.clock import NS_PER_S as NS
from streamfuse.config import AlignConfig
from streamfuse.wire.schema import Message, Window

SNAP_NS = 2_000_000  # "a block stamped within 2 ms of where the previous one ended follows it"

# (source, seq, t_start_ns, t_end_ns, present, frame_t_ns, frames, audio bytes | None,
#  samplerate, audio_coverage, texts, text_t_ns)
Content = tuple


def key(c: Content) -> tuple[str, int]:
    """(source, seq): the order :func:`expected` gives its windows in."""
    return c[0], c[1]


def content(w: Window) -> Content:
    """The aligner's window in the oracle's terms."""
    audio = None if w.audio is None else np.ascontiguousarray(w.audio, dtype=np.float32).tobytes()
    frames = tuple(f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in w.frames)
    return (w.source, w.seq, w.t_start_ns, w.t_end_ns, tuple(sorted(w.present.items())),
            tuple(w.frame_t_ns), frames, audio, w.samplerate, w.audio_coverage,
            tuple(w.texts), tuple(w.text_t_ns))


def _frame_bytes(m: Message) -> bytes:
    return m.array().tobytes() if m.header.encoding == "raw" else bytes(m.payload[0])


def _nearest_frames(frames: list[Message], start: int, window: int, n: int) -> list[Message]:
    inside = [m for m in frames if start <= m.t_ns < start + window]
    if not inside:
        return []
    picked = []
    for i in range(n):
        instant = start + (i + Fraction(1, 2)) * window / n
        best = inside[0]
        for m in inside[1:]:
            d, d_best = abs(m.t_ns - instant), abs(best.t_ns - instant)
            if d < d_best or (d == d_best and m.t_ns < best.t_ns):
                best = m
        picked.append(best)
    return picked


def _place_audio(blocks: list[Message]) -> tuple[dict[int, np.ndarray], int, int]:
    """{absolute sample index: one sample (all channels)}, samplerate, channels."""
    placed: dict[int, np.ndarray] = {}
    sr = blocks[0].header.samplerate
    channels = blocks[0].header.channels
    prev_end: int | None = None  # sample index just past the previous block
    for m in blocks:
        data = m.array()
        if prev_end is not None and abs(m.t_ns - Fraction(prev_end * NS, sr)) <= SNAP_NS:
            first = prev_end
        else:
            first = round(Fraction(m.t_ns * sr, NS))  # the grid sample nearest the stamp
        for j in range(len(data)):
            placed.setdefault(first + j, data[j])  # overlap: the first block keeps its samples
        prev_end = first + len(data)
    return placed, sr, channels


def _window(source: str, k: int, cfg: AlignConfig, frames: list[Message],
            audio: tuple[dict[int, np.ndarray], int, int] | None, texts: list[Message]) -> Content | None:
    window, hop = cfg.window_ms * 10**6, cfg.hop_ms * 10**6
    start, end = k * hop, k * hop + window

    chosen = _nearest_frames(frames, start, window, cfg.frames_per_window)

    wave, sr, coverage = None, 0, 0.0
    if audio is not None:
        placed, rate, channels = audio
        first = Fraction(start * rate, NS)
        first = first.numerator // first.denominator + (first.denominator != 1)  # the first sample >= start
        n = round(Fraction(window * rate, NS))
        have = [first + j in placed for j in range(n)]
        if any(have):
            out = np.zeros((n, channels), dtype=np.float32)
            for j in range(n):
                if have[j]:
                    out[j] = placed[first + j]
            wave, sr, coverage = out.tobytes(), rate, sum(have) / n

    context = cfg.text_context_ms * 10**6
    inside = [(m.t_ns, i, m) for i, m in enumerate(texts) if end - context <= m.t_ns < end]
    newest = sorted(inside, key=lambda x: (x[0], x[1]))[-cfg.max_text_messages:] if inside else []

    present = {"video": bool(chosen), "audio": wave is not None, "text": bool(newest)}
    if not any(present.values()):
        return None
    return (source, k, start, end, tuple(sorted(present.items())),
            tuple(m.t_ns for m in chosen), tuple(_frame_bytes(m) for m in chosen),
            wave, sr, coverage, tuple(m.text() for _, _, m in newest), tuple(t for t, _, _ in newest))


def expected(messages: Iterable[Message], cfg: AlignConfig) -> list[Content]:
    """Every window the rules give for ``messages`` (each stream in order), sorted."""
    by_source: dict[str, dict[str, list[Message]]] = {}
    for m in messages:
        if m.kind in ("frame", "audio", "text"):
            by_source.setdefault(m.header.source, {}).setdefault(m.kind, []).append(m)
    window, hop = cfg.window_ms * 10**6, cfg.hop_ms * 10**6
    context = cfg.text_context_ms * 10**6
    out: list[Content] = []
    for source, streams in by_source.items():
        frames, blocks, texts = streams.get("frame", []), streams.get("audio", []), streams.get("text", [])
        audio = _place_audio(blocks) if blocks else None
        # every window that could hold anything: from the first that reaches the earliest
        # message to the last whose text context reaches the latest (audio: its end)
        times = [m.t_ns for m in frames + blocks + texts]
        if audio is not None:
            times.append(max(audio[0]) * NS // audio[1] + 1)
        lo, hi = (min(times) - window) // hop, (max(times) + context) // hop + 1
        for k in range(lo, hi + 1):
            w = _window(source, k, cfg, frames, audio, texts)
            if w is not None:
                out.append(w)
    return sorted(out, key=key)
