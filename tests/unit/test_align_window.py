"""The aligner core, rule by rule, on hand-made streams with a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.align.offline import windows_from_messages
from streamfuse.align.window import Aligner
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.config import AlignConfig
from streamfuse.wire import codec
from streamfuse.wire.schema import Message, Window

T0 = 1_790_000_000_000_000_000  # a window boundary (divisible by 500 ms)
SR = 16000


def cfg(**kw) -> AlignConfig:
    return AlignConfig(**kw)


def frame(t: int, seq: int = 0, *, src: str = "r1", value: int | None = None, shape=(4, 6, 3)) -> Message:
    img = np.full(shape, (seq if value is None else value) % 256, np.uint8)
    return codec.frame_message(src, seq, t, img)


def block(t: int, seq: int = 0, *, src: str = "r1", n: int = 320, value: float | None = None,
          sr: int = SR, channels: int = 1, dtype=np.float32) -> Message:
    data = np.full((n, channels), seq if value is None else value, dtype)
    return codec.audio_message(src, seq, t, data, sr)


def text(t: int, s: str, seq: int = 0, *, src: str = "r1") -> Message:
    return codec.text_message(src, seq, t, s)


def hb(t: int, stream: str, *, src: str = "r1", seq: int = 0) -> Message:
    return codec.heartbeat_message(src, stream, seq, t)


def av(start: int, end: int, *, src: str = "r1", fps: int = 30, video=True, audio=True) -> list[Message]:
    """Video frames and 20 ms audio blocks for ``[start, end)``, sorted by time."""
    msgs: list[Message] = []
    if video:
        period = 1_000_000_000 // fps
        msgs += [frame(t, i, src=src) for i, t in enumerate(range(start, end, period))]
    if audio:
        msgs += [block(t, i, src=src) for i, t in enumerate(range(start, end, 20 * MS))]
    msgs.sort(key=lambda m: m.t_ns)
    return msgs


def feed(al: Aligner, msgs: list[Message], *, delay: int = 0) -> list[Window]:
    """Deliver each message ``delay`` after its t_ns, popping after each one."""
    out: list[Window] = []
    for m in msgs:
        al.push(m, m.t_ns + delay)
        out += al.pop_ready(m.t_ns + delay)
    return out


# ----------------------------------------------------------------------------- boundaries


def test_windows_on_the_epoch_grid_per_source() -> None:
    al = Aligner(cfg())
    msgs = av(T0, T0 + 3000 * MS) + av(T0 + 250 * MS, T0 + 3000 * MS, src="r2")
    msgs.sort(key=lambda m: m.t_ns)
    ws = feed(al, msgs) + al.flush()
    for src in ("r1", "r2"):
        mine = [w for w in ws if w.source == src]
        assert [w.t_start_ns for w in mine] == sorted({w.t_start_ns for w in mine})
        for w in mine:
            assert w.t_start_ns % (500 * MS) == 0 and w.t_end_ns - w.t_start_ns == 1000 * MS
            assert w.seq == w.t_start_ns // (500 * MS)
    r2 = [w for w in ws if w.source == "r2"]
    # The first window of r2 is the first one that contains its first message.
    assert r2[0].t_start_ns == T0 - 500 * MS and r2[0].audio_coverage == pytest.approx(0.25)
    assert al.stats.windows["r1"] == len(ws) - len(r2)


def test_closes_when_every_required_watermark_passes_the_end() -> None:
    al = Aligner(cfg())
    end = T0 + 1000 * MS
    # Video is already past the end; audio lags behind it.
    for m in av(T0, end + 100 * MS, audio=False) + av(T0, end - 40 * MS, video=False):
        al.push(m, m.t_ns)
    assert [w.t_end_ns for w in al.pop_ready(end + 100 * MS)] == [T0 + 500 * MS]
    al.push(block(end - 40 * MS, 48), end + 101 * MS)
    assert al.pop_ready(end + 101 * MS) == []  # audio watermark is now end - 20 ms
    al.push(block(end - 20 * MS, 49), end + 102 * MS)
    (w,) = al.pop_ready(end + 102 * MS)
    assert w.t_end_ns == end and w.audio_coverage == 1.0 and w.present["video"]
    assert w.close_ns == end + 102 * MS  # now_src: the newest t_ns plus the time since it came


def test_closes_at_max_lateness_and_marks_missing_streams_absent() -> None:
    al = Aligner(cfg(max_lateness_ms=250))
    end = T0 + 1000 * MS
    for m in sorted(av(T0, end + 100 * MS, audio=False) + av(T0, T0 + 400 * MS, video=False),
                    key=lambda m: m.t_ns):
        al.push(m, m.t_ns)
    # Audio stops at T0 + 400 ms but is not dead yet: it holds the window until end + 250 ms.
    assert [w.t_end_ns for w in al.pop_ready(end + 249 * MS)] == [T0 + 500 * MS]
    (w,) = al.pop_ready(end + 250 * MS)
    assert w.t_end_ns == end and w.audio_coverage == pytest.approx(0.4)
    (w2,) = al.pop_ready(end + 750 * MS)  # window [500, 1500) ms: no audio at all
    assert w2.present == {"video": True, "audio": False, "text": False} and w2.audio is None
    assert al.stats.absent[("r1", "audio")] == 1


def test_dead_stream_stops_holding_windows_at_once() -> None:
    al = Aligner(cfg(dead_after_ms=2000, max_lateness_ms=250))
    video = av(T0, T0 + 6000 * MS, audio=False)
    audio = av(T0, T0 + 1000 * MS, video=False)  # the microphone dies after 1 s
    msgs = sorted(video + audio, key=lambda m: m.t_ns)
    closed_at: dict[int, int] = {}
    for m in msgs:
        al.push(m, m.t_ns)
        for w in al.pop_ready(m.t_ns):
            closed_at[w.t_end_ns] = m.t_ns
    late_end = T0 + 4000 * MS  # audio watermark + dead_after = T0 + 3 s: dead by then
    # Before it is dead, windows wait for the lateness bound; after, only for video.
    assert closed_at[T0 + 2000 * MS] >= T0 + 2250 * MS
    assert closed_at[late_end] - late_end < 40 * MS


def test_optional_text_holds_windows_while_alive() -> None:
    al = Aligner(cfg(required=["video"]))
    end = T0 + 1000 * MS
    al.push(hb(T0, "text"), T0)
    for m in av(T0, end + 100 * MS, audio=False):
        al.push(m, m.t_ns)
    al.push(hb(end - 50 * MS, "text"), end + 100 * MS)
    assert [w.t_end_ns for w in al.pop_ready(end + 100 * MS)] == [T0 + 500 * MS]
    al.push(text(end - 10 * MS, "hi"), end + 101 * MS)
    al.push(hb(end, "text"), end + 102 * MS)
    (w,) = al.pop_ready(end + 102 * MS)
    assert w.texts == ["hi"] and w.present["text"]


def test_required_stream_never_seen_holds_only_for_dead_after() -> None:
    al = Aligner(cfg(dead_after_ms=2000))
    closed_at = {}
    for m in av(T0, T0 + 5000 * MS, audio=False):  # no audio at all
        al.push(m, m.t_ns)
        for w in al.pop_ready(m.t_ns):
            closed_at[w.t_end_ns] = m.t_ns
    assert closed_at[T0 + 1000 * MS] >= T0 + 1250 * MS  # waits for the missing audio
    assert closed_at[T0 + 3000 * MS] - (T0 + 3000 * MS) < 40 * MS  # gave up on it
    assert al.stats.absent.get(("r1", "audio"), 0) == 0  # never seen: not counted absent


# ----------------------------------------------------------------------------- video


def _nearest(ts: list[int], start: int, window: int, n: int) -> list[int]:
    inside = [t for t in ts if start <= t < start + window]
    out = []
    for i in range(n):
        p2 = 2 * n * start + (2 * i + 1) * window
        out.append(min(inside, key=lambda t: (abs(2 * n * t - p2), t)))
    return out


def test_jittered_frames_nearest_to_evenly_spaced_instants() -> None:
    rng = np.random.default_rng(1)
    ts = sorted({T0 + i * 33_333_333 + int(rng.integers(-8, 9)) * MS for i in range(120)})
    msgs = [frame(t, i) for i, t in enumerate(ts)]
    ws = list(windows_from_messages(msgs, cfg(frames_per_window=5)))
    assert ws
    for w in ws:
        assert w.frame_t_ns == _nearest(ts, w.t_start_ns, 1000 * MS, 5)
        for img, t in zip(w.frames, w.frame_t_ns, strict=True):
            assert img[0, 0, 0] == ts.index(t) % 256  # the frame that was sent at t


def test_fewer_frames_are_reused_and_none_is_absent() -> None:
    msgs = [frame(T0 + 100 * MS, 0), frame(T0 + 700 * MS, 1), block(T0 + 2400 * MS, 0)]
    ws = {w.t_start_ns: w for w in windows_from_messages(msgs, cfg(frames_per_window=4))}
    w = ws[T0]
    assert [t - T0 for t in w.frame_t_ns] == [100 * MS, 100 * MS, 700 * MS, 700 * MS]
    assert w.frames[0] is not w.frames[2]
    empty = ws[T0 + 2000 * MS]
    assert empty.present["video"] is False and empty.frames == [] and empty.frame_t_ns == []


def test_raw_frames_by_reference_jpeg_never_decoded() -> None:
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    raw = codec.frame_message("r1", 0, T0 + 10 * MS, img)
    jpeg_bytes = b"\xff\xd8\xff\xe0" + b"not really a jpeg"
    jpg = codec.frame_message("r2", 0, T0 + 10 * MS, jpeg_bytes, encoding="jpeg", shape=(4, 6, 3))
    ws = {w.source: w for w in windows_from_messages([raw, jpg], cfg())}
    assert np.shares_memory(ws["r1"].frames[0], img) and ws["r1"].frame_encoding == "raw"
    assert ws["r2"].frames[0] is jpeg_bytes and ws["r2"].frame_encoding == "jpeg"


def test_camera_reopened_at_another_size_keeps_one_format_per_window() -> None:
    msgs = [frame(T0 + i * 100 * MS, i) for i in range(5)]
    msgs += [frame(T0 + i * 100 * MS, i, shape=(8, 8, 3)) for i in range(5, 10)]
    al = Aligner(cfg())
    ws = list(windows_from_messages(msgs, cfg(), aligner=al))
    for w in ws:
        assert len({f.shape for f in w.frames}) == 1
    assert al.stats.rejected[("r1", "video", "format_change")] == 5


# ----------------------------------------------------------------------------- audio


def test_audio_gaps_overlaps_and_jitter() -> None:
    blocks = []
    for i in range(50):
        if i == 10:
            continue  # a lost block: a 20 ms gap of zeros
        jitter = 300_000 if i % 4 == 1 else 0  # 0.3 ms of ADC timestamp jitter: snapped
        blocks.append(block(T0 + i * 20 * MS + jitter, i, value=float(i)))
        if i == 5:
            blocks.append(block(T0 + 5 * 20 * MS, 5, value=100.0))  # sent twice: dropped
        if i == 29:
            blocks.append(block(T0 + 29 * 20 * MS + 10 * MS, 30, value=99.0))  # half over block 29
    al = Aligner(cfg(required=["audio"]))
    ws = {w.t_start_ns: w for w in windows_from_messages(blocks, cfg(), aligner=al)}
    w = ws[T0]
    assert w.audio is not None and w.audio.shape == (16000, 1) and w.audio.dtype == np.float32
    expected = np.repeat(np.arange(50, dtype=np.float32), 320)
    expected[10 * 320:11 * 320] = 0.0
    # The earlier-starting block keeps its samples; each later one adds only what is new.
    expected[30 * 320:30 * 320 + 160] = 99.0
    expected[30 * 320 + 160:31 * 320] = 30.0
    assert np.array_equal(w.audio[:, 0], expected)
    assert w.audio_coverage == pytest.approx(49 / 50)
    assert al.stats.rejected[("r1", "audio", "duplicate")] == 1


def test_audio_overlap_cut_keeps_earlier_block() -> None:
    msgs = [block(T0, 0, value=1.0), block(T0 + 10 * MS, 1, value=2.0), block(T0 + 40 * MS, 2, value=3.0)]
    (w,) = [w for w in windows_from_messages(msgs, cfg(required=["audio"])) if w.t_start_ns == T0]
    a = w.audio[:, 0]
    assert np.all(a[:320] == 1.0) and np.all(a[320:480] == 2.0)
    assert np.all(a[480:640] == 0.0) and np.all(a[640:960] == 3.0)
    assert w.audio_coverage == pytest.approx(800 / 16000)


def test_samplerate_mismatch_rejected_and_int16_converted() -> None:
    msgs = [block(T0, 0, value=16384, dtype=np.int16), block(T0 + 20 * MS, 1, sr=48000, n=960),
            block(T0 + 20 * MS, 2, channels=2)]
    al = Aligner(cfg())
    (w,) = [w for w in windows_from_messages(msgs, cfg(), aligner=al) if w.t_start_ns == T0]
    assert w.samplerate == SR and np.allclose(w.audio[:320, 0], 0.5)
    assert al.stats.rejected[("r1", "audio", "samplerate")] == 1
    assert al.stats.rejected[("r1", "audio", "channels")] == 1
    al2 = Aligner(cfg(), samplerates={"r1": 48000})
    al2.push(block(T0, 0), T0)
    assert al2.stats.rejected[("r1", "audio", "samplerate")] == 1


# ----------------------------------------------------------------------------- text


def test_text_context_and_burst() -> None:
    c = cfg(text_context_ms=2000, max_text_messages=3, required=["text"])
    msgs = [text(T0 - 2500 * MS, "old")]  # outside [end - 2 s, end) of window [0, 1 s)
    msgs += [text(T0 - 1500 * MS, "early")]
    msgs += [text(T0 + 900 * MS + i * 10_000, f"b{i}") for i in range(200)]  # a burst
    msgs += [text(T0 + 1000 * MS, "at the end")]  # t == end: the next window's
    al = Aligner(c)
    peak = 0
    out = []
    for m in msgs:
        al.push(m, m.t_ns)
        out += al.pop_ready(m.t_ns)
        peak = max(peak, sum(len(s.text) for s in al._sources.values()))
    ws = {w.t_start_ns: w for w in out + al.flush()}
    assert ws[T0].texts == ["b197", "b198", "b199"]
    assert ws[T0 - 500 * MS].texts == ["early"]
    assert ws[T0 + 500 * MS].texts == ["b198", "b199", "at the end"]
    assert peak <= 40  # the burst was compacted to what some window can show


def test_text_only_source() -> None:
    msgs = [hb(T0 + i * 100 * MS, "text") for i in range(40)] + [text(T0 + 1234 * MS, "seven")]
    msgs.sort(key=lambda m: m.t_ns)
    ws = list(windows_from_messages(msgs, cfg()))
    assert ws and all(w.present == {"video": False, "audio": False, "text": True} for w in ws)
    assert all(w.texts == ["seven"] for w in ws)
    assert ws[0].t_end_ns == T0 + 1500 * MS


# ----------------------------------------------------------------------------- lateness, clocks


def test_late_frame_counted_and_used_only_by_open_windows() -> None:
    al = Aligner(cfg(required=["video"]))
    ws = feed(al, av(T0, T0 + 1600 * MS, audio=False))
    assert ws[-1].t_end_ns == T0 + 1500 * MS  # [T0 + 500, T0 + 1500) is closed
    al.push(frame(T0 + 1380 * MS, 900, value=200), T0 + 1600 * MS)  # late for it, in time for the next
    al.push(frame(T0 + 400 * MS, 901, value=201), T0 + 1600 * MS)  # late for every open window
    assert al.stats.late[("r1", "video")] == 2
    ws = al.flush()
    assert T0 + 1380 * MS in ws[0].frame_t_ns and T0 + 400 * MS not in ws[0].frame_t_ns


def test_seq_reset_of_a_restarted_capture() -> None:
    first = av(T0, T0 + 2000 * MS)
    # The capture process restarts: counters start again at 0 after a 300 ms gap.
    second = [(codec.frame_message("r1", i, m.t_ns + 2300 * MS, m.array()) if m.kind == "frame" else
               codec.audio_message("r1", i, m.t_ns + 2300 * MS, m.array(), SR))
              for i, m in enumerate(av(T0, T0 + 2000 * MS))]
    al = Aligner(cfg())
    ws = feed(al, first + second, delay=3 * MS) + al.flush()
    assert al.stats.restarts[("r1", "video")] == 1 and al.stats.restarts[("r1", "audio")] == 1
    assert not al.stats.late and not al.stats.rejected
    starts = [w.t_start_ns for w in ws]
    assert starts == [T0 + k * 500 * MS for k in range(-1, 9)]
    gap = next(w for w in ws if w.t_start_ns == T0 + 2000 * MS)
    assert gap.audio_coverage == pytest.approx(0.7)


def test_far_future_and_past_timestamps_are_dropped_without_stalling_others() -> None:
    al = Aligner(cfg())
    msgs = av(T0, T0 + 4000 * MS) + av(T0, T0 + 4000 * MS, src="r2")
    msgs.sort(key=lambda m: m.t_ns)
    clean = Aligner(cfg())
    want = feed(clean, msgs, delay=2 * MS)
    bad = []
    for i, m in enumerate(msgs):
        if i % 7 == 3:  # a broken camera clock on r1 and a bogus audio block
            bad.append((codec.frame_message("r1", 5000 + i, m.t_ns + 3600 * 10**9, np.zeros((4, 6, 3), np.uint8)), m.t_ns))
            bad.append((block(m.t_ns - 3600 * 10**9, 7000 + i), m.t_ns))
    got = []
    bad_at = {t: [] for _, t in bad}
    for b, t in bad:
        bad_at[t].append(b)
    peak = 0
    for m in msgs:
        al.push(m, m.t_ns + 2 * MS)
        for b in bad_at.get(m.t_ns, []):
            al.push(b, m.t_ns + 2 * MS)
        got += al.pop_ready(m.t_ns + 2 * MS)
        peak = max(peak, al.buffered_bytes())
    assert [(w.source, w.t_start_ns, w.frame_t_ns, w.audio_coverage) for w in got] == \
        [(w.source, w.t_start_ns, w.frame_t_ns, w.audio_coverage) for w in want]
    assert al.stats.rejected[("r1", "video", "future")] > 0
    assert al.stats.rejected[("r1", "audio", "past")] > 0
    assert not al.stats.resyncs
    assert peak <= clean.buffered_bytes() + 200_000


def test_a_looped_replay_restarts_the_source_timeline_but_answers_no_window_twice() -> None:
    loop = av(T0, T0 + 5000 * MS)
    al = Aligner(cfg(dead_after_ms=2000))
    first = feed(al, loop) + al.pop_ready(T0 + 5000 * MS + 10**9)
    second: list[Window] = []
    # The same recording again, received 6 s later, then going on past its end.
    for m in av(T0, T0 + 8000 * MS):
        al.push(m, m.t_ns + 6000 * MS)
        second += al.pop_ready(m.t_ns + 6000 * MS)
    second += al.pop_ready(T0 + 15000 * MS)
    assert al.stats.resyncs["r1"] == 1 and len(al.resync_events) == 1
    ev = al.resync_events[0]
    assert ev.source == "r1" and ev.to_ns < ev.from_ns - 4000 * MS
    # The first 2 s of the repeat are counted and dropped while the new timeline
    # proves itself; the windows the first pass answered are not answered again.
    assert al.stats.rejected[("r1", "video", "past")] + al.stats.rejected[("r1", "audio", "past")] > 100
    assert al.stats.repeated["r1"] > 0
    answered = {w.key for w in first}
    assert answered and not answered & {w.key for w in second}
    # Past the first pass the new timeline is served as usual.
    after = [w.t_start_ns for w in second]
    assert after == [T0 + k * 500 * MS for k in range(10, 16)]


def test_now_src_follows_the_source_clock_not_the_wall() -> None:
    """A recording from long ago, replayed now: windows close as they did live."""
    old = T0 - 400 * 86400 * 10**9
    wall = T0 + 123 * MS
    msgs = av(old, old + 3000 * MS, audio=False)
    al = Aligner(cfg(required=["video"]))
    ws = []
    for m in msgs:
        al.push(m, wall + (m.t_ns - old))
        ws += al.pop_ready(wall + (m.t_ns - old))
    assert [w.t_end_ns - old for w in ws] == [500 * MS, 1000 * MS, 1500 * MS, 2000 * MS, 2500 * MS]
    # Nothing more closes until the source clock passes the next end + lateness.
    last = msgs[-1].t_ns
    now = wall + (last - old)
    assert al.pop_ready(now + (old + 3000 * MS - last) + 249 * MS) == []
    (w,) = al.pop_ready(now + (old + 3000 * MS - last) + 250 * MS)
    assert w.t_end_ns == old + 3000 * MS and w.close_ns == old + 3250 * MS


def test_silence_does_not_spin_over_empty_windows() -> None:
    al = Aligner(cfg())
    feed(al, av(T0, T0 + 1000 * MS))
    year = 10**9 * 3600 * 24 * 365
    assert len(al.pop_ready(T0 + year)) == 2  # a year later: the last windows, and at once
    ring = al.buffered_bytes()  # the audio ring: fixed size
    al.push(frame(T0 + year, 0), T0 + year)
    assert al.pop_ready(T0 + year) == [] and al.buffered_bytes() == ring + 4 * 6 * 3


def test_window_message_round_trip() -> None:
    msgs = av(T0, T0 + 1500 * MS) + [text(T0 + 200 * MS, "sept")]
    msgs.sort(key=lambda m: m.t_ns)
    for w in windows_from_messages(msgs, cfg()):
        back = codec.decode_window(codec.encode_window(w))
        assert back.key == w.key and back.present == w.present and back.texts == w.texts
        assert back.frame_t_ns == w.frame_t_ns and back.samplerate == w.samplerate
        assert all(np.array_equal(a, b) for a, b in zip(back.frames, w.frames, strict=True))
        assert (back.audio is None) == (w.audio is None)
        if w.audio is not None:
            assert np.array_equal(back.audio, w.audio)


def test_host_clock_step_forward_restarts_the_source() -> None:
    """Live, a capture host's clock jumps an hour ahead: rejected as future until the
    new timeline has held for dead_after, then the source follows it."""
    al = Aligner(cfg(dead_after_ms=2000))
    ws = feed(al, av(T0, T0 + 3000 * MS))
    hour = 3600 * 10**9
    for m in av(T0 + hour + 3000 * MS, T0 + hour + 8000 * MS):
        recv = m.t_ns - hour  # arrives right after the first part, stamped an hour ahead
        al.push(m, recv)
        ws += al.pop_ready(recv)
    ws += al.flush()
    assert al.stats.resyncs["r1"] == 1 and al.stats.rejected[("r1", "video", "future")] > 0
    after = [w for w in ws if w.t_start_ns > T0 + hour]
    assert after and all(w.present["video"] and w.present["audio"] for w in after[1:-2])


def test_recording_with_an_hour_gap_offline() -> None:
    msgs = av(T0, T0 + 1000 * MS) + av(T0 + 3600 * 10**9, T0 + 3600 * 10**9 + 1000 * MS)
    ws = list(windows_from_messages(msgs, cfg()))  # returns at once: empty windows are skipped
    assert len(ws) == 6 and not any(T0 + 2000 * MS < w.t_start_ns < T0 + 3599 * 10**9 for w in ws)
