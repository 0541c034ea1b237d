"""Aligner properties (hypothesis): arrival order, coverage, order, uniqueness.

A scenario is one or two sources, each with any non-empty subset of video
(jittered frames), audio (blocks with random losses, samples numbered by their
index, stamps exact or jittered by up to 0.7 ms) and text (random messages plus heartbeats every 100 ms). Live delivery
keeps each stream in order (as ZeroMQ does per publisher) and delays every
message by up to ``max_lateness - 50 ms``; the live aligner is also polled at
random instants in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamfuse.align.offline import windows_from_messages
from streamfuse.align.window import Aligner
from streamfuse.config import AlignConfig
from streamfuse.wire import codec
from streamfuse.wire.schema import Message, Window

MS = 1_000_000
T0 = 1_790_000_000_000_000_000
SR = 8000


@dataclass
class Scenario:
    cfg: AlignConfig
    messages: list[Message]  # in t_ns order
    frames: dict[str, list[int]]  # source -> frame times
    samples: dict[str, dict[int, int]]  # source -> {absolute sample index: value}
    audio_jitter_ns: int  # ADC-style jitter of audio stamps (0: exact, samples checkable)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    hop = draw(st.sampled_from([250, 500]))
    cfg = AlignConfig(window_ms=draw(st.sampled_from([hop, 2 * hop])), hop_ms=hop, max_lateness_ms=250,
                      frames_per_window=draw(st.integers(1, 5)), text_context_ms=draw(st.sampled_from([0, 700, 3000])),
                      max_text_messages=draw(st.integers(1, 4)),
                      required=draw(st.lists(st.sampled_from(["video", "audio", "text"]), unique=True)))
    jitter = draw(st.sampled_from([0, 0, 700_000]))
    msgs: list[Message] = []
    frames: dict[str, list[int]] = {}
    samples: dict[str, dict[int, int]] = {}
    for src in ["s1", "s2"][:draw(st.integers(1, 2))]:
        streams = draw(st.lists(st.sampled_from(["video", "audio", "text"]), min_size=1, unique=True))
        # Start just after a window boundary, so the first window is never closed
        # before every stream has been heard from (a stream starting late is dead on arrival).
        start = T0 + draw(st.integers(0, 40)) * hop * MS + draw(st.integers(0, 50)) * MS
        dur = draw(st.integers(300, 3000)) * MS
        if "video" in streams:
            period = 1_000_000_000 // draw(st.sampled_from([5, 15, 30]))
            ts = sorted({start + i * period + draw(st.integers(0, 9)) * MS for i in range(dur // period + 1)})
            frames[src] = ts
            msgs += [codec.frame_message(src, i, t, np.full((2, 2, 3), i % 251, np.uint8)) for i, t in enumerate(ts)]
        if "audio" in streams:
            n = draw(st.sampled_from([80, 160]))
            lost = set(draw(st.lists(st.integers(0, 400), max_size=10)))
            samples[src] = {}
            a0 = start * SR // 1_000_000_000  # exact: start is a whole number of ms
            for i in range(dur // (n * 1_000_000_000 // SR) + 1):
                if i in lost:
                    continue
                a = a0 + i * n
                vals = np.arange(a - a0, a - a0 + n, dtype=np.float32)  # exact in float32
                samples[src].update({a + j: int(v) for j, v in enumerate(vals)})
                t = a * 1_000_000_000 // SR + (draw(st.integers(-jitter, jitter)) if jitter else 0)
                msgs.append(codec.audio_message(src, i, t, vals.reshape(-1, 1), SR))
        if "text" in streams:
            for i, t in enumerate(range(start, start + dur + 1, 100 * MS)):
                msgs.append(codec.heartbeat_message(src, "text", i, t))
            offs = draw(st.lists(st.integers(0, dur // MS), max_size=12))
            msgs += [codec.text_message(src, i, start + o * MS, f"{src}-{i}") for i, o in enumerate(sorted(offs))]
    msgs.sort(key=lambda m: m.t_ns)  # stable: equal times keep stream order
    return Scenario(cfg, msgs, frames, samples, jitter)


def live(sc: Scenario, delays: list[int], polls: list[int]) -> list[Window]:
    """Deliver with the given per-message delays (stream order kept) and extra polls."""
    last: dict[str, int] = {}
    events = []
    for m, d in zip(sc.messages, delays, strict=False):
        arrive = max(m.t_ns + d, last.get(m.topic, 0))
        last[m.topic] = arrive
        events.append((arrive, 0, len(events), m))
    t_end = sc.messages[-1].t_ns
    events += [(T0 + p * MS, 1, i, None) for i, p in enumerate(polls)]
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    al = Aligner(sc.cfg)
    out: list[Window] = []
    for at, _, _, m in events:
        if m is not None:
            al.push(m, at)
        out += al.pop_ready(at)
    out += al.pop_ready(t_end + 10 * 10**9)  # long after: everything closes on time
    return out


def content(w: Window) -> tuple:
    audio = None if w.audio is None else w.audio.tobytes()
    frames = [f.tobytes() if isinstance(f, np.ndarray) else f for f in w.frames]
    return (w.source, w.seq, w.t_start_ns, w.t_end_ns, tuple(sorted(w.present.items())), tuple(w.frame_t_ns),
            tuple(frames), audio, w.samplerate, w.audio_coverage, tuple(w.texts), tuple(w.text_t_ns))


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(sc=scenarios(), data=st.data())
def test_any_arrival_order_within_lateness_gives_the_same_windows(sc: Scenario, data: st.DataObject) -> None:
    max_delay = (sc.cfg.max_lateness_ms - 50) * MS
    delays = data.draw(st.lists(st.integers(0, max_delay), min_size=len(sc.messages), max_size=len(sc.messages)))
    polls = data.draw(st.lists(st.integers(0, 45 * 500 + 4000), max_size=30))
    want = [content(w) for w in windows_from_messages(sc.messages, sc.cfg)]
    got = [content(w) for w in live(sc, delays, polls)]
    assert sorted(got) == sorted(want)


def _nearest(ts: list[int], start: int, window: int, n: int) -> list[int]:
    inside = [t for t in ts if start <= t < start + window]
    return [min(inside, key=lambda t: (abs(2 * n * t - (2 * n * start + (2 * i + 1) * window)), t))
            for i in range(n)] if inside else []


@SETTINGS
@given(sc=scenarios())
def test_samples_and_frames_land_in_exactly_the_windows_that_cover_them(sc: Scenario) -> None:
    assume(sc.audio_jitter_ns == 0)  # with jitter, samples are placed by the snapping rule
    ws = list(windows_from_messages(sc.messages, sc.cfg))
    W, hop = sc.cfg.window_ms * MS, sc.cfg.hop_ms * MS
    for src, ts in sc.frames.items():
        mine = {w.t_start_ns: w for w in ws if w.source == src}
        for k in range((ts[0] - W) // hop + 1, ts[-1] // hop + 1):
            want = _nearest(ts, k * hop, W, sc.cfg.frames_per_window)
            got = mine[k * hop].frame_t_ns if k * hop in mine else []
            assert got == want
    for src, smp in sc.samples.items():
        mine = {w.t_start_ns: w for w in ws if w.source == src}
        idx = sorted(smp)
        for k in range((idx[0] * 10**9 // SR - W) // hop + 1, idx[-1] * 10**9 // SR // hop + 1):
            s0, n = k * hop * SR // 10**9, W * SR // 10**9
            want = np.array([smp.get(s0 + j, 0) for j in range(n)], dtype=np.float32)
            present = sum((s0 + j) in smp for j in range(n))
            w = mine.get(k * hop)
            if present == 0:
                assert w is None or w.audio is None
                continue
            assert w is not None and w.audio is not None and w.audio.shape == (n, 1)
            assert np.array_equal(w.audio[:, 0], want)
            assert w.audio_coverage == present / n


@SETTINGS
@given(sc=scenarios(), data=st.data())
def test_windows_in_time_order_per_source_and_never_twice(sc: Scenario, data: st.DataObject) -> None:
    delays = data.draw(st.lists(st.integers(0, 400 * MS), min_size=len(sc.messages), max_size=len(sc.messages)))
    ws = live(sc, delays, [])  # delays past the lateness bound too: order and uniqueness still hold
    keys = [w.key for w in ws]
    assert len(keys) == len(set(keys))
    for src in {w.source for w in ws}:
        starts = [w.t_start_ns for w in ws if w.source == src]
        assert starts == sorted(starts)
