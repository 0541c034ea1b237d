"""One hour of a busy source through the aligner core in fake time: memory stays bounded."""

from __future__ import annotations

import numpy as np
import pytest

from streamfuse.align.window import Aligner
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.clock import NS_PER_S as S
from streamfuse.config import AlignConfig
from streamfuse.wire import codec
from streamfuse.wire.schema import AudioHeader, FrameHeader, HeartbeatHeader, Message

T0 = 1_790_000_000_000_000_000
VGA = np.zeros((480, 640, 3), np.uint8)  # every frame references this one buffer, as on the wire
BLOCK = np.zeros((320, 1), np.float32)
FRAME_PAYLOAD = codec.frame_message("cam", 0, 0, VGA).payload
BLOCK_PAYLOAD = codec.audio_message("cam", 0, 0, BLOCK, 16000).payload


def frame(seq: int, t: int) -> Message:
    # Built directly (what codec.frame_message makes): an hour of frames in seconds.
    return Message("cam/video", FrameHeader(source="cam", stream="video", seq=seq, t_ns=t, shape=VGA.shape),
                   FRAME_PAYLOAD)


def block(seq: int, t: int) -> Message:
    return Message("cam/audio", AudioHeader(source="cam", stream="audio", seq=seq, t_ns=t, samplerate=16000,
                                            channels=1, frames=320), BLOCK_PAYLOAD)


def second(k: int, seq: dict[str, int]) -> list[tuple[Message, int]]:
    """Second ``k`` of the stream as (message, arrival time): 30 VGA frames, 50
    audio blocks, 10 heartbeats, one text, each arriving 3 ms after its ``t_ns``;
    misbehaviour every 10 minutes (see below)."""
    base = T0 + k * S
    msgs: list[Message] = []

    def nxt(stream: str) -> int:
        seq[stream] = seq.get(stream, -1) + 1
        return seq[stream]

    minute = (k // 60) % 10
    for i in range(30):
        msgs.append(frame(nxt("video"), base + i * 33_333_333 + (i % 3) * MS))
    if minute != 3:  # minute 3 of every 10: the microphone is gone (dead stream)
        for i in range(50):
            msgs.append(block(nxt("audio"), base + i * 20 * MS))
    for i in range(10):
        msgs.append(Message("cam/text", HeartbeatHeader(source="cam", stream="text", seq=nxt("hb"),
                                                        t_ns=base + i * 100 * MS)))
    msgs.append(codec.text_message("cam", nxt("text"), base + 500 * MS, f"second {k}"))
    out = [(m, m.t_ns + 3 * MS) for m in msgs]
    if minute == 5 and k % 60 == 0:
        # A burst of text, a frame from a broken clock far in the future, a block
        # from far in the past (both arriving now), and the video capture
        # restarting (seq back to 0).
        out += [(codec.text_message("cam", nxt("text"), base + 600 * MS + j, "spam"), base + 601 * MS + j)
                for j in range(2000)]
        out.append((codec.frame_message("cam", 0, base + 10 * 3600 * S, VGA), base + 700 * MS))
        out.append((codec.audio_message("cam", 0, base - 3600 * S, BLOCK, 16000), base + 700 * MS))
        seq["video"] = -1
    out.sort(key=lambda p: p[1])
    return out


@pytest.mark.slow
def test_one_hour_keeps_buffers_bounded() -> None:
    cfg = AlignConfig()
    al = Aligner(cfg)
    seq: dict[str, int] = {}
    peak_by_10min: list[int] = []
    windows = 0
    for k in range(3600):
        if k % 600 == 0:
            peak_by_10min.append(0)
        for m, recv in second(k, seq):
            al.push(m, recv)
            windows += len(al.pop_ready(recv))
        peak_by_10min[-1] = max(peak_by_10min[-1], al.buffered_bytes())
    # What open windows need: frames of window + lateness + one hop + the accepted
    # future (window + lateness), the fixed audio ring, and a little text.
    span_s = (2 * (cfg.window_ms + cfg.max_lateness_ms) + cfg.hop_ms) / 1000
    bound = int(span_s * 30 + 4) * VGA.nbytes + 16000 * 4 * 5 + 64 * 1024
    assert max(peak_by_10min) <= bound
    assert peak_by_10min[-1] <= peak_by_10min[0] * 1.05  # no growth over the hour
    stats = al.stats
    assert 7100 <= windows == stats.windows["cam"] <= 7200
    assert stats.rejected[("cam", "video", "future")] == 6
    assert stats.rejected[("cam", "audio", "past")] == 6
    assert stats.restarts[("cam", "video")] == 6
    assert stats.absent[("cam", "audio")] >= 6 * 115  # the dead minutes
    assert not stats.late and not stats.resyncs


def test_invented_source_names_are_forgotten_once_silent() -> None:
    """With no configured sources every name is aligned; names a publisher invents and
    drops cost nothing once silent for FORGET_AFTER_NS, and a source that comes back
    after that starts afresh without answering any window twice."""
    from streamfuse.align.window import FORGET_AFTER_NS

    al = Aligner(AlignConfig(window_ms=1000, hop_ms=500))
    names = [f"made-up-{i}" for i in range(300)]
    for seq, name in enumerate(names):
        al.push(codec.text_message(name, seq, T0 + seq * MS, "hello"), T0 + seq * MS)
    first = al.pop_ready(T0 + 20 * S)  # every window closes on the lateness bound
    assert {w.source for w in first} == set(names)
    assert len(al._sources) == len(names)  # noqa: SLF001 - the state this test is about
    assert al.pop_ready(T0 + FORGET_AFTER_NS - S) == []
    assert len(al._sources) == len(names)  # noqa: SLF001 - silent, but not long enough
    al.pop_ready(T0 + FORGET_AFTER_NS + 2 * S)
    assert len(al._sources) == 0  # noqa: SLF001
    assert al.buffered_bytes() == 0
    # The first name comes back with the same message (a looped replay, not re-stamped):
    # its window was answered before it was forgotten, so it is not answered again...
    back = T0 + FORGET_AFTER_NS + 3 * S
    al.push(codec.text_message(names[0], 0, T0, "hello"), back)
    assert al.pop_ready(back + 20 * S) == []
    assert al.stats.repeated[names[0]] >= 1
    # ...while new data on its clock makes new windows, none of them answered before.
    al.push(codec.text_message(names[0], 1, T0 + 20 * S, "again"), back + 20 * S)
    again = al.pop_ready(back + 40 * S)
    assert again and {w.source for w in again} == {names[0]}
    assert not {w.seq for w in again} & {w.seq for w in first if w.source == names[0]}


def test_a_source_that_keeps_talking_is_kept() -> None:
    """Heartbeats alone keep a source's state, however long it sends no data."""
    from streamfuse.align.window import FORGET_AFTER_NS

    al = Aligner(AlignConfig(window_ms=1000, hop_ms=500))
    al.push(codec.text_message("quiet", 0, T0, "hello"), T0)
    for i in range(1, 2 * FORGET_AFTER_NS // S):
        t = T0 + i * S
        al.push(Message("quiet/text", HeartbeatHeader(source="quiet", stream="text", seq=i, t_ns=t)), t)
        al.pop_ready(t)
    assert "quiet" in al._sources  # noqa: SLF001


def _forget_all(al: Aligner, names: list[str], at: int) -> tuple[list, int]:
    """Each name sends one text at ``at`` (its window is answered), then all fall silent
    and are forgotten, in order. Returns the windows and the local time after."""
    from streamfuse.align.window import FORGET_AFTER_NS

    for name in names:
        al.push(codec.text_message(name, 0, T0, "hello"), at)
    first = al.pop_ready(at + 20 * S)
    later = at + FORGET_AFTER_NS + 30 * S
    al.pop_ready(later)
    assert not any(n in al._sources for n in names)  # noqa: SLF001 - the state under test
    return first, later


def _answers_again(al: Aligner, name: str, now: int) -> bool:
    """``name`` comes back with the message it sent before (a replay, not re-stamped)."""
    al.push(codec.text_message(name, 0, T0, "hello"), now)
    return bool(al.pop_ready(now + 20 * S))


def test_answered_ranges_are_kept_for_the_most_recently_forgotten_sources(monkeypatch) -> None:
    """Beyond FORGOTTEN_KEPT forgotten sources, the ranges of the one forgotten longest ago
    go: it alone may answer a window twice; the others, and one forgotten again since, not."""
    from streamfuse.align import window as window_mod

    monkeypatch.setattr(window_mod, "FORGOTTEN_KEPT", 8)
    al = Aligner(AlignConfig(window_ms=1000, hop_ms=500))
    names = [f"made-up-{i}" for i in range(12)]
    first, now = _forget_all(al, names, T0)
    assert {w.source for w in first} == set(names)
    assert list(al._forgotten) == names[4:]  # noqa: SLF001 - oldest forgotten dropped first
    assert not al._answered  # noqa: SLF001
    # made-up-4, the oldest kept, comes back and is forgotten again: now the most recent.
    assert not _answers_again(al, names[4], now)
    assert al.stats.repeated[names[4]] >= 1
    _, now = _forget_all(al, ["other"], now + 40 * S)
    assert list(al._forgotten)[-2:] == [names[4], "other"]  # noqa: SLF001
    assert names[5] not in al._forgotten  # noqa: SLF001 - pushed out by "other"
    assert not _answers_again(al, names[4], now)
    assert _answers_again(al, names[0], now)  # forgotten 8 others ago: the documented limit
    assert len(al._forgotten) <= 8  # noqa: SLF001


def test_configured_sources_keep_their_answered_ranges(monkeypatch) -> None:
    from streamfuse.align import window as window_mod

    monkeypatch.setattr(window_mod, "FORGOTTEN_KEPT", 2)
    names = [f"cam{i}" for i in range(6)]
    al = Aligner(AlignConfig(window_ms=1000, hop_ms=500), sources=names)
    first, now = _forget_all(al, names, T0)
    assert {w.source for w in first} == set(names)
    assert set(al._answered) == set(names) and not al._forgotten  # noqa: SLF001
    for name in names:
        assert not _answers_again(al, name, now)


def test_forgotten_ranges_stay_bounded_with_more_invented_names_than_the_cap() -> None:
    """The real cap: FORGOTTEN_KEPT + 1,000 invented names, each answered once and forgotten."""
    from streamfuse.align.window import FORGOTTEN_KEPT

    al = Aligner(AlignConfig(window_ms=1000, hop_ms=1000, text_context_ms=1000))
    names = [f"n{i}" for i in range(FORGOTTEN_KEPT + 1000)]
    first, now = _forget_all(al, names, T0)
    assert len(first) == len(names)  # one window each
    assert len(al._forgotten) == FORGOTTEN_KEPT and not al._answered  # noqa: SLF001
    assert next(iter(al._forgotten)) == names[1000]  # noqa: SLF001
    assert not _answers_again(al, names[-1], now) and _answers_again(al, names[0], now)
