"""The pure parts of the capture processes: no devices, sockets or clocks."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.capture import camera, microphone, text
from streamfuse.capture.publish import Backoff, Counts, Heartbeats
from streamfuse.capture.tools import TailStats
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.config import BusConfig, TextConfig


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(1.0, initial_s=0.1)
    assert [round(b.next_delay_s(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next_delay_s() == 0.1


def test_heartbeats_are_due_every_interval() -> None:
    hb = Heartbeats(100 * MS)
    assert hb.due(0)
    hb.sent(1000 * MS)
    assert not hb.due(1050 * MS) and hb.wait_s(1050 * MS) == pytest.approx(0.05)
    assert hb.due(1100 * MS) and hb.wait_s(1200 * MS) == 0.0


def test_heartbeat_due_just_after_each_window_end() -> None:
    hb = Heartbeats(100 * MS, grid=(1000 * MS, 500 * MS))  # windows end at every 500 ms
    hb.sent(1460 * MS)
    assert hb.wait_s(1470 * MS) == pytest.approx(0.03)  # the end at 1500 comes before 1560
    assert not hb.due(1499 * MS) and hb.due(1500 * MS)
    hb.sent(1500 * MS)  # a heartbeat exactly at the end: the next end is 2000, the interval first
    assert hb.wait_s(1500 * MS) == pytest.approx(0.1)
    odd = Heartbeats(10_000 * MS, grid=(700 * MS, 500 * MS))  # ends at 700, 1200, 1700, ...
    odd.sent(1000 * MS)
    assert odd.wait_s(1000 * MS) == pytest.approx(0.2) and odd.due(1200 * MS)


def test_counts_line() -> None:
    c = Counts(grabbed=3, published=2, dropped={"text": 1})
    assert "grabbed=3 published=2" in c.line() and "dropped=1 (text=1)" in c.line()


# ----------------------------------------------------------------------------- video


def test_video_device_kinds() -> None:
    assert camera.parse_device("0") == camera.Device("index", 0)
    assert camera.parse_device(" 2 ") == camera.Device("index", 2)
    assert camera.parse_device("http://cam/stream.mjpg").kind == "url"
    assert camera.parse_device("RTSP://host/live").kind == "url"
    assert camera.parse_device("udp://127.0.0.1:5000").kind == "url"
    assert camera.parse_device("/data/clip.mp4") == camera.Device("file", "/data/clip.mp4")


def test_pacer_schedules_frames_at_the_file_rate() -> None:
    p = camera.Pacer(25.0)
    t0 = 10_000 * MS
    deadlines = []
    now = t0
    for _ in range(5):
        deadlines.append(p.deadline_ns(now))
        p.advance()
        now += 1 * MS  # the caller is fast: deadlines stay on the 40 ms grid
    assert deadlines == [t0 + i * 40 * MS for i in range(5)]


def test_pacer_restarts_its_schedule_after_a_stall_instead_of_bursting() -> None:
    p = camera.Pacer(30.0)
    assert p.deadline_ns(0) == 0
    p.advance()
    late = 2_000 * MS
    assert p.deadline_ns(late) == late  # restarted at now, not 1 s of frames at once
    p.advance()
    assert p.deadline_ns(late) == late + p.period_ns


def test_file_fps_falls_back_to_the_configured_rate() -> None:
    assert camera.file_fps(25.0, 30.0) == 25.0
    assert camera.file_fps(0.0, 30.0) == 30.0
    assert camera.file_fps(float("nan"), 15.0) == 15.0
    assert camera.file_fps(90000.0, 30.0) == 30.0


def test_fit_resizes_only_when_needed() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    assert camera.fit(img, 640, 480) is img
    assert camera.fit(img, 320, 240).shape == (240, 320, 3)
    assert camera.fit(np.zeros((10, 20), np.uint8), 20, 10).shape == (10, 20, 3)
    assert camera.fit(np.zeros((10, 20, 4), np.uint8), 20, 10).shape == (10, 20, 3)


# ----------------------------------------------------------------------------- audio


def test_audio_device_by_index_name_or_default() -> None:
    assert microphone.parse_device("3") == 3
    assert microphone.parse_device("vmic") == "vmic"
    assert microphone.parse_device("default") is None


def test_blocksize() -> None:
    from streamfuse.config import AudioConfig

    assert microphone.blocksize(AudioConfig(samplerate=16000, block_ms=20)) == 320
    assert microphone.blocksize(AudioConfig(samplerate=48000, block_ms=10)) == 480


def test_block_clock_is_continuous_through_jittery_measurements() -> None:
    rng = np.random.default_rng(0)
    bc = microphone.BlockClock(16000)
    t0 = 1_000_000 * MS
    stamps = [bc.stamp(t0 + i * 20 * MS + int(rng.integers(-3 * MS, 3 * MS)), 320) for i in range(500)]
    steps = np.diff(stamps) / MS
    assert np.all(np.abs(steps - 20) <= 1.0)
    assert abs(stamps[-1] - (t0 + 499 * 20 * MS)) < 3 * MS


def test_block_clock_slews_toward_a_latency_jump_without_breaking_continuity() -> None:
    # ALSA's pulse plugin: the reported latency drops by 340 ms once the stream settles.
    bc = microphone.BlockClock(16000)
    t0 = 1_000_000 * MS
    stamps = [bc.stamp(t0 + i * 20 * MS + (340 * MS if i >= 50 else 0), 320) for i in range(1000)]
    steps = np.diff(stamps) / MS
    assert np.all(np.abs(steps - 20) <= 1.0 + 1e-6)
    assert abs(stamps[-1] - (t0 + 999 * 20 * MS + 340 * MS)) < 1 * MS
    assert bc.reanchors == 0


def test_block_clock_reanchors_on_overflow_and_gross_jumps() -> None:
    bc = microphone.BlockClock(16000)
    assert bc.stamp(0, 320) == 0
    assert bc.stamp(20 * MS, 320) == 20 * MS
    assert bc.stamp(500 * MS, 320, overflow=True) == 500 * MS  # samples were lost: a real gap
    assert bc.stamp(5_000 * MS, 320) == 5_000 * MS  # more than 1 s off: trust the clock
    assert bc.reanchors == 2


# ----------------------------------------------------------------------------- text


def test_validate_rejects_long_and_invalid_text() -> None:
    assert text.validate("ünï ✓".encode(), 64) == "ünï ✓"
    with pytest.raises(text.Rejected) as e:
        text.validate(b"x" * 65, 64)
    assert e.value.reason == "too_large"
    with pytest.raises(text.Rejected) as e:
        text.validate(b"ab\xffcd", 64)
    assert e.value.reason == "text"


def test_line_splitter_joins_pieces_and_bounds_long_lines() -> None:
    s = text.LineSplitter(8)
    assert s.feed(b"one\ntw") == [b"one"]
    assert s.feed(b"o\r\n\n") == [b"two"]
    out = s.feed(b"0123456789abcdef")  # too long: rejected once, the rest skipped
    assert len(out) == 1 and isinstance(out[0], text.Rejected) and out[0].reason == "too_large"
    assert s.feed(b"more\nok\n") == [b"ok"]
    assert s.feed(b"tail") == [] and s.flush() == [b"tail"] and s.flush() == []


def test_follow_action_like_tail_dash_f() -> None:
    assert text.follow_action(100, 7, 7, 150) == "read"
    assert text.follow_action(100, 7, 7, 100) == "read"
    assert text.follow_action(100, 7, 7, 10) == "truncated"
    assert text.follow_action(100, 7, 8, 500) == "rotated"
    assert text.follow_action(100, 7, None, 0) == "missing"


def test_text_endpoint_defaults_next_to_the_bus() -> None:
    bus = BusConfig(input="ipc:///run/sf/in")
    assert text.text_endpoint(TextConfig(), bus, "room1") == "ipc:///run/sf/text-room1"
    assert text.text_endpoint(TextConfig(endpoint="tcp://127.0.0.1:5599"), bus, "r") == "tcp://127.0.0.1:5599"
    assert text.text_endpoint(TextConfig(), BusConfig(input="tcp://10.0.0.1:5560"), "r").endswith("/text-r")


# ----------------------------------------------------------------------------- tail


def test_tail_stats_rate_gaps_and_latency() -> None:
    stats = TailStats()
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 lost
        stats.add("room1/audio", seq, t_ns=seq * 20 * MS, now_ns=seq * 20 * MS + 2 * MS, heartbeat=False)
    stats.add("room1/audio", 7, t_ns=0, now_ns=0, heartbeat=True)
    (line,) = stats.report(1.0)
    assert line.startswith("room1/audio") and "5.0 msg/s" in line and "gaps 2" in line
    assert "p50 2.0 ms max 2.0 ms" in line and "hb 1" in line
    stats.add("room1/audio", 8, t_ns=0, now_ns=0, heartbeat=False)
    assert "gaps 0" in stats.report(1.0)[0]  # seq tracking continues across periods
