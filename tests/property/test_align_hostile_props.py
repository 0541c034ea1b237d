"""The aligner core against any mix of sane and absurd stamps (hypothesis).

Messages are built by hand (not decoded), so the core sees values the codec would
refuse too: any 64-bit ``t_ns`` and ``seq``, several sources and streams,
heartbeats, and a local clock that only moves forward. Whatever arrives, the core
never raises, never emits one (source, window start) twice, emits only windows that
encode on the wire, and its buffers stay within what its open windows may hold.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse.align.window import Aligner
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.config import AlignConfig
from streamfuse.wire import codec
from streamfuse.wire.schema import Message, Window

T0 = 1_790_000_000_000_000_000
SR = 8000
BLOCK = 160  # 20 ms at SR
SPECIAL = [0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 1 - 5 * 10**8, -(2**63),
           codec.T_MIN_NS - 1, codec.T_MAX_NS, T0 + 3600 * 10**9, T0 - 3600 * 10**9]

sane_t = st.integers(-5_000, 30_000).map(lambda ms: T0 + ms * MS)
absurd_t = st.one_of(st.sampled_from(SPECIAL), st.integers(-(2**63), 2**64 - 1))
any_seq = st.one_of(st.integers(0, 50), st.sampled_from([2**63 - 1, 2**64 - 1, -1]),
                    st.integers(-(2**63), 2**64 - 1))


@st.composite
def events(draw: st.DrawFn) -> tuple[int, Message]:
    """(local arrival delay in ms, message)."""
    source = draw(st.sampled_from(["s1", "s2", "s3"]))
    t = draw(st.one_of(sane_t, sane_t, sane_t, absurd_t))
    seq = draw(any_seq)
    kind = draw(st.sampled_from(["frame", "audio", "text", "heartbeat"]))
    if kind == "frame":
        msg = codec.frame_message(source, seq, t, np.full((2, 2, 3), 7, np.uint8))
    elif kind == "audio":
        msg = codec.audio_message(source, seq, t, np.ones((BLOCK, 1), np.float32), SR)
    elif kind == "text":
        msg = codec.text_message(source, seq, t, "x" * draw(st.integers(0, 20)))
    else:
        stream = draw(st.sampled_from(["video", "audio", "text"]))
        msg = codec.heartbeat_message(source, stream, seq, t)
    return draw(st.integers(0, 300)), msg


@st.composite
def runs(draw: st.DrawFn) -> list[tuple[int, Message]]:
    """A stream sent in real time (20 ms apart) from a sane start: what moves timelines."""
    source = draw(st.sampled_from(["s1", "s2"]))
    t = draw(sane_t)
    out = []
    for i in range(draw(st.integers(5, 80))):
        if i % 3 == 0:
            img = np.full((2, 2, 3), i % 256, np.uint8)
            out.append((0, codec.frame_message(source, i, t + i * 20 * MS, img)))
        out.append((20 if i else 0, codec.audio_message(source, i, t + i * 20 * MS,
                                                         np.ones((BLOCK, 1), np.float32), SR)))
    return out


def _check(windows: list[Window], seen: set[tuple[str, int]]) -> None:
    for w in windows:
        assert w.key not in seen, f"window {w.key} emitted twice"
        seen.add(w.key)
        assert codec.T_MIN_NS <= w.t_start_ns < w.t_end_ns < codec.T_MAX_NS
        codec.encode_window(w)  # fits the wire: no OverflowError


def _bound(al: Aligner, n_sources: int) -> int:
    """Bytes the buffers may hold: each source's audio ring (one channel at SR) and
    the frames and text of its open windows and accepted future (a generous count)."""
    ring = round(al.audio_ring_s * SR) * 4
    per_window = 64 * (2 * 2 * 3) + 64 * 20
    return n_sources * (ring + 8 * per_window)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(events().map(lambda e: [e]), runs()), min_size=1, max_size=30),
       flush=st.booleans(), dead_ms=st.sampled_from([300, 600]))
def test_any_stamps_never_raise_repeat_or_grow(parts: list[list[tuple[int, Message]]], flush: bool,
                                               dead_ms: int) -> None:
    al = Aligner(AlignConfig(dead_after_ms=dead_ms, required=["video", "audio"]))
    seen: set[tuple[str, int]] = set()
    now = T0 - 10_000 * MS
    for delay_ms, msg in (e for part in parts for e in part):
        now += delay_ms * MS
        al.push(msg, now)
        _check(al.pop_ready(now), seen)
        assert al.buffered_bytes() <= _bound(al, 3)
    _check(al.pop_ready(now + 3600 * 10**9), seen)
    if flush:
        _check(al.flush(), seen)
    assert sum(al.stats.windows.values()) == len(seen)
