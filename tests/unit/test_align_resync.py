"""Hostile and broken clocks against the aligner core: what may move a source's timeline.

Reproductions of issue #14 on the pure core, with a fake clock: a burst of text stamped
an hour away, stamps near 2**64, and the sustained evidence that a real resync needs.
"""

from __future__ import annotations

import pytest

from streamfuse.align import window as window_mod
from streamfuse.align.window import Aligner
from streamfuse.wire.schema import Message, TextHeader, Window
from tests.unit.test_align_window import MS, T0, av, block, cfg, feed, frame, hb, text

HOUR = 3600 * 10**9
NEAR_2_64 = 2**64 - 1 - 5 * 10**8


def _healthy(al: Aligner, start: int, end: int) -> list[Window]:
    return feed(al, av(start, end), delay=2 * MS)


def _keys(ws: list[Window]) -> list[tuple[str, int]]:
    return [w.key for w in ws]


@pytest.mark.parametrize(("shift", "reason"), [(HOUR, "future"), (-HOUR, "past")])
def test_a_burst_of_three_texts_an_hour_away_only_counts_as_rejected(shift: int,
                                                                     reason: str) -> None:
    clean = Aligner(cfg())
    want = _healthy(clean, T0, T0 + 6000 * MS) + clean.pop_ready(T0 + 8000 * MS)
    al = Aligner(cfg())
    got = _healthy(al, T0, T0 + 3000 * MS)
    recv = T0 + 3000 * MS
    for i in range(3):  # 1 s apart in source time, sent back to back
        al.push(text(T0 + 3000 * MS + shift + i * 10**9, f"hostile {i}", seq=i), recv + i)
        got += al.pop_ready(recv + i)
    got += _healthy(al, T0 + 3000 * MS, T0 + 6000 * MS) + al.pop_ready(T0 + 8000 * MS)
    assert _keys(got) == _keys(want) and len(got) == 13
    assert [w.present for w in got] == [w.present for w in want]
    assert al.stats.rejected == {("r1", "text", reason): 3}
    assert not al.stats.resyncs and not al.resync_events and not al.stats.repeated


def test_a_sparse_or_instant_burst_of_data_never_resyncs() -> None:
    al = Aligner(cfg(dead_after_ms=2000))
    ws = _healthy(al, T0, T0 + 3000 * MS)
    recv = T0 + 3000 * MS
    # Three blocks 1 s apart, then 5 s of dense blocks, all sent at once: no timeline
    # proves itself in the stamps alone; the source has gone quiet meanwhile.
    burst = [block(T0 + HOUR + i * 10**9, i) for i in range(3)]
    burst += [block(T0 + HOUR + 10 * 10**9 + i * 20 * MS, 10 + i) for i in range(250)]
    for i, m in enumerate(burst):
        al.push(m, recv + i * 1000)
        ws += al.pop_ready(recv + i * 1000)
    ws += al.pop_ready(recv + 10 * 10**9)
    assert not al.stats.resyncs and al.stats.rejected[("r1", "audio", "future")] == len(burst)
    assert ws and all(w.t_end_ns <= T0 + 3500 * MS for w in ws)


def test_heartbeats_and_text_on_a_new_timeline_never_resync() -> None:
    al = Aligner(cfg(dead_after_ms=2000))
    ws = _healthy(al, T0, T0 + 3000 * MS)
    base = T0 + 3000 * MS
    for i in range(60):  # 6 s in real time, stamped an hour ahead
        t, recv = base + HOUR + i * 100 * MS, base + i * 100 * MS
        for m in (hb(t, "video", seq=i), hb(t, "audio", seq=i), text(t, "x", seq=i)):
            al.push(m, recv)
        ws += al.pop_ready(recv)
    assert not al.stats.resyncs
    streams = ("video", "audio", "text")
    assert al.stats.rejected == {("r1", stream, "future"): 60 for stream in streams}
    assert all(w.t_end_ns <= T0 + 3500 * MS for w in ws)


@pytest.mark.parametrize("shift", [HOUR, -HOUR])
def test_sustained_audio_on_a_new_timeline_resyncs_once_after_dead_after(shift: int) -> None:
    al = Aligner(cfg(dead_after_ms=2000, required=["audio"]))
    ws = _healthy(al, T0, T0 + 3000 * MS)
    base = T0 + 3000 * MS
    seen_at: dict[tuple[str, int], int] = {}
    for i in range(300):  # 6 s of 20 ms blocks, in real time, on the new timeline
        recv = base + i * 20 * MS
        al.push(block(base + shift + i * 20 * MS, 1000 + i), recv)
        for w in al.pop_ready(recv):
            ws.append(w)
            seen_at[w.key] = recv
    assert al.stats.resyncs == {"r1": 1} and len(al.resync_events) == 1
    ev = al.resync_events[0]
    assert ev.stream == "audio" and ev.to_ns - ev.from_ns == pytest.approx(shift, abs=3 * 10**9)
    moved = [w for w in ws if abs(w.t_start_ns - base) > HOUR // 2]
    assert moved and all(w.present == {"video": False, "audio": True, "text": False} for w in moved)
    # Nothing on the new timeline before it held for dead_after, on both clocks.
    assert min(seen_at[w.key] for w in moved) >= base + 2000 * MS
    assert min(w.t_start_ns for w in moved) >= base + shift + 2000 * MS - 1000 * MS
    assert len(set(_keys(ws))) == len(ws)
    assert al.stats.rejected[("r1", "audio", "future" if shift > 0 else "past")] >= 100


def test_accepted_data_on_the_old_timeline_keeps_it() -> None:
    """Sustained hostile audio an hour ahead while the real camera keeps sending."""
    al = Aligner(cfg(dead_after_ms=2000))
    ws = _healthy(al, T0, T0 + 2000 * MS)
    for i in range(300):
        t = T0 + 2000 * MS + i * 20 * MS
        al.push(block(t + HOUR, 5000 + i), t + 2 * MS)
        if i % 3 == 0:
            al.push(frame(t, 100 + i), t + 2 * MS)
        ws += al.pop_ready(t + 2 * MS)
    assert not al.stats.resyncs and al.stats.rejected[("r1", "audio", "future")] == 300
    assert all(abs(w.t_start_ns - T0) < 10 * 10**9 for w in ws)


def test_a_clock_stepping_back_and_forth_never_answers_a_window_twice() -> None:
    al = Aligner(cfg(dead_after_ms=2000))
    ws: list[Window] = []
    recv = T0
    # 4 s, then the clock steps back 3 s for 5 s, then forward again 10 s ahead.
    for start, length in ((T0, 4000), (T0 + 1000 * MS, 5000), (T0 + 16_000 * MS, 4000)):
        for m in av(start, start + length * MS):
            at = recv + (m.t_ns - start)
            al.push(m, at)
            ws += al.pop_ready(at)
        recv += length * MS + 20 * MS
    ws += al.pop_ready(recv + 10 * 10**9)
    assert al.stats.resyncs["r1"] == 2 and al.stats.repeated["r1"] > 0
    keys = _keys(ws)
    assert len(set(keys)) == len(keys)
    starts = sorted(k for _, k in keys)
    assert starts[-1] >= T0 + 19_000 * MS  # the last timeline is served


def test_stamps_outside_2000_to_2200_never_reach_the_source_state() -> None:
    al = Aligner(cfg())
    header = TextHeader(source="ghost", stream="text", seq=0, t_ns=NEAR_2_64)
    hostile = Message("ghost/text", header, (b"x",))
    al.push(hostile, T0)
    ws = _healthy(al, T0, T0 + 2000 * MS)
    for i in range(3):
        al.push(text(NEAR_2_64 + i, "x", seq=i), T0 + 2000 * MS)
        al.push(frame(2**63 + i, i), T0 + 2000 * MS)
    ws += al.pop_ready(T0 + 5000 * MS)
    assert al.stats.rejected == {("ghost", "text", "time"): 1, ("r1", "text", "time"): 3,
                                 ("r1", "video", "time"): 3}
    assert {w.source for w in ws} == {"r1"} and max(w.t_end_ns for w in ws) < T0 + 3 * 10**9


def test_answered_ranges_merge_and_stay_bounded() -> None:
    ranges: list[tuple[int, int]] = []
    for i in range(100):
        window_mod._remember(ranges, 10 * i, 10 * i + 3 + i % 2)
    assert len(ranges) == window_mod._MAX_ANSWERED
    for i in range(100):  # every emitted window is still covered: over-suppress, never repeat
        assert window_mod._answered_until(ranges, 10 * i) is not None
    window_mod._remember(ranges, 4, 999)
    assert ranges == [(0, 999)]


def test_a_looped_restamped_replay_at_4x_never_resyncs_and_answers_each_window_once() -> None:
    """``streamfuse replay --loop --restamp --rate 4``: stamps run ahead of arrival, and
    each pass follows the last one, so the timeline never jumps."""
    recording = av(T0, T0 + 3000 * MS)
    wall0 = T0 + 400 * 86400 * 10**9  # replayed long after it was recorded
    al = Aligner(cfg(dead_after_ms=2000))
    ws: list[Window] = []
    shift = 0
    for _ in range(3):
        for m in recording:
            t = wall0 + (m.t_ns - T0) + shift  # re-stamped
            recv = wall0 + ((m.t_ns - T0) + shift) // 4  # paced at 4x
            copy = frame(t, m.header.seq) if m.kind == "frame" else block(t, m.header.seq)
            al.push(copy, recv)
            ws += al.pop_ready(recv)
        shift += 3000 * MS + 20 * MS
    ws += al.flush()
    assert not al.stats.resyncs and not al.stats.rejected and not al.stats.repeated
    keys = _keys(ws)
    assert len(keys) == len(set(keys)) and len(ws) >= 3 * 6


def test_a_chain_of_texts_each_inside_the_future_bound_cannot_walk_the_clock() -> None:
    clean = Aligner(cfg())
    want = _healthy(clean, T0, T0 + 6000 * MS) + clean.pop_ready(T0 + 8000 * MS)
    al = Aligner(cfg())
    got = _healthy(al, T0, T0 + 3000 * MS)
    recv = T0 + 3000 * MS
    step = al.horizon_ns - 50 * MS  # each one just inside the bound of the one before
    for i in range(1, 11):
        al.push(text(recv + i * step, f"walk {i}", seq=i), recv + i)
        al.push(hb(recv + i * step, "text", seq=i), recv + i)
        got += al.pop_ready(recv + i)
    got += _healthy(al, T0 + 3000 * MS, T0 + 6000 * MS) + al.pop_ready(T0 + 8000 * MS)

    def av_windows(ws: list[Window]) -> list[tuple]:
        return [(w.key, w.present["video"], w.present["audio"], w.audio_coverage) for w in ws
                if w.present["video"] or w.present["audio"]]

    assert av_windows(got) == av_windows(want) and len(av_windows(got)) == 13
    assert al.stats.rejected[("r1", "text", "future")] == 18  # all but the first text and beat
    assert not al.stats.late and not al.stats.resyncs
