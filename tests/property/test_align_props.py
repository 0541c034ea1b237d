"""Aligner properties (hypothesis): arrival order, coverage, order, uniqueness.

The windows are compared with tests/helpers/align_oracle.py, the rules of
streamfuse/align/window.py's docstring written out simply and slowly.

A scenario is one or two sources, each with any non-empty subset of video
(frames jittered, or exactly periodic from a window boundary so that two frames
tie for an instant), audio (blocks with random losses, samples numbered by their
index, stamps exact or jittered by up to 0.7 ms) and text (random messages plus heartbeats every 100 ms). Live delivery
keeps each stream in order (as ZeroMQ does per publisher) and delays every
message by up to ``max_lateness - 50 ms``; the live aligner is also polled at
random instants in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse.align.offline import windows_from_messages
from streamfuse.align.window import Aligner
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.config import AlignConfig
from streamfuse.wire import codec
from streamfuse.wire.schema import Message, Window
from tests.helpers import align_oracle as oracle
from tests.helpers.align_oracle import content

T0 = 1_790_000_000_000_000_000
SR = 8000


@dataclass
class Scenario:
    cfg: AlignConfig
    messages: list[Message]  # in t_ns order


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    hop = draw(st.sampled_from([250, 500]))
    cfg = AlignConfig(window_ms=draw(st.sampled_from([hop, 2 * hop])), hop_ms=hop, max_lateness_ms=250,
                      frames_per_window=draw(st.integers(1, 5)), text_context_ms=draw(st.sampled_from([0, 700, 3000])),
                      max_text_messages=draw(st.integers(1, 4)),
                      required=draw(st.lists(st.sampled_from(["video", "audio", "text"]), unique=True)))
    jitter = draw(st.sampled_from([0, 0, 700_000]))
    msgs: list[Message] = []
    for src in ["s1", "s2"][:draw(st.integers(1, 2))]:
        streams = draw(st.lists(st.sampled_from(["video", "audio", "text"]), min_size=1, unique=True))
        # Start just after a window boundary, so the first window is never closed
        # before every stream has been heard from (a stream starting late is dead on arrival).
        start = T0 + draw(st.integers(0, 40)) * hop * MS + draw(st.just(0) | st.integers(0, 50)) * MS
        dur = draw(st.integers(300, 3000)) * MS
        if "video" in streams:
            period = 1_000_000_000 // draw(st.sampled_from([5, 10, 15, 30]))
            late_ms = draw(st.sampled_from([0, 9]))  # 0: periodic, so instants can fall between two frames
            ts = sorted({start + i * period + draw(st.integers(0, late_ms)) * MS for i in range(dur // period + 1)})
            msgs += [codec.frame_message(src, i, t, np.full((2, 2, 3), i % 251, np.uint8)) for i, t in enumerate(ts)]
        if "audio" in streams:
            n = draw(st.sampled_from([80, 160]))
            lost = set(draw(st.lists(st.integers(0, 400), max_size=10)))
            a0 = start * SR // 1_000_000_000  # exact: start is a whole number of ms
            for i in range(dur // (n * 1_000_000_000 // SR) + 1):
                if i in lost:
                    continue
                a = a0 + i * n
                vals = np.arange(a - a0, a - a0 + n, dtype=np.float32)  # exact in float32
                t = a * 1_000_000_000 // SR + (draw(st.integers(-jitter, jitter)) if jitter else 0)
                msgs.append(codec.audio_message(src, i, t, vals.reshape(-1, 1), SR))
        if "text" in streams:
            for i, t in enumerate(range(start, start + dur + 1, 100 * MS)):
                msgs.append(codec.heartbeat_message(src, "text", i, t))
            offs = draw(st.lists(st.integers(0, dur // MS), max_size=12))
            msgs += [codec.text_message(src, i, start + o * MS, f"{src}-{i}") for i, o in enumerate(sorted(offs))]
    msgs.sort(key=lambda m: m.t_ns)  # stable: equal times keep stream order
    return Scenario(cfg, msgs)


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


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(sc=scenarios(), data=st.data())
def test_any_arrival_order_within_lateness_gives_the_same_windows(sc: Scenario, data: st.DataObject) -> None:
    """Live, with every message delayed within the lateness bound (each stream in
    order) and polls at random instants: the windows the rules give, every time."""
    max_delay = (sc.cfg.max_lateness_ms - 50) * MS
    delays = data.draw(st.lists(st.integers(0, max_delay), min_size=len(sc.messages), max_size=len(sc.messages)))
    polls = data.draw(st.lists(st.integers(0, 45 * 500 + 4000), max_size=30))
    got = sorted((content(w) for w in live(sc, delays, polls)), key=oracle.key)
    assert got == oracle.expected(sc.messages, sc.cfg)


@SETTINGS
@given(sc=scenarios())
def test_windows_from_recorded_messages_follow_the_rules(sc: Scenario) -> None:
    """Offline (the trainer's path): frames, samples (stamps exact or jittered) and
    texts land in exactly the windows the rules give them, and nothing else does."""
    got = sorted((content(w) for w in windows_from_messages(sc.messages, sc.cfg)), key=oracle.key)
    assert got == oracle.expected(sc.messages, sc.cfg)


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
