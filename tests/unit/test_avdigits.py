"""`streamfuse dataset avdigits`: layout, split hygiene, stream contents and determinism.

Built from what ships with the code (scikit-learn digits, espeak-ng, generated
noise), so it runs without a directory of real media.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from streamfuse.clock import NS_PER_S
from streamfuse.datasets import avdigits
from streamfuse.record.reader import read_messages
from streamfuse.train.labels import read_labels
from streamfuse.wire.schema import AudioHeader, FrameHeader, HeartbeatHeader, TextHeader

pytestmark = pytest.mark.slow

PARAMS = avdigits.Params(segments=12, seed=3, segments_per_file=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("avd") / "a"
    return out, avdigits.build(out, PARAMS)


def _messages(d: Path) -> list:
    return list(read_messages([d]))


def test_layout_and_labels(built):
    out, summary = built
    assert sorted(p.name for p in out.iterdir()) == ["avdigits.json", "test", "train", "val"]
    assert json.loads((out / "avdigits.json").read_text()) == json.loads(json.dumps(summary))
    total = 0
    for split in avdigits.SPLITS:
        d = out / split
        mcaps = sorted(d.glob("*.mcap"))
        assert mcaps and (d / "labels.csv").exists()
        msgs = _messages(d)
        ranges: dict[str, tuple[int, int]] = {}
        for m in msgs:
            lo, hi = ranges.get(m.header.source, (m.t_ns, m.t_ns))
            ranges[m.header.source] = (min(lo, m.t_ns), max(hi, m.t_ns))
        spans = read_labels(d / "labels.csv", ranges)  # validates sources, order, overlap, range
        assert len(spans) == summary["splits"][split]["segments"]
        assert {s.label for s in spans} <= set(avdigits.LABELS)
        assert all(s.end_ns - s.start_ns == avdigits.SEGMENT_NS for s in spans)
        total += len(spans)
    assert total == PARAMS.segments
    assert summary["splits"]["train"]["segments"] > summary["splits"]["test"]["segments"] > 0


def test_splits_share_no_speaker_and_no_image(built):
    _, summary = built
    s = summary["splits"]
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not set(s[a]["speakers"]) & set(s[b]["speakers"])
        assert not set(s[a]["images"]) & set(s[b]["images"])


def test_stream_contents(built):
    out, summary = built
    msgs = _messages(out / "train")
    assert [m.t_ns for m in msgs] == sorted(m.t_ns for m in msgs)
    kinds = Counter((m.header.stream, type(m.header).__name__) for m in msgs)
    frames = [m for m in msgs if isinstance(m.header, FrameHeader)]
    assert all(m.header.encoding == "jpeg" and m.header.shape == (128, 128, 3) for m in frames)
    covered = summary["splits"]["train"]["camera_covered"]
    assert len(frames) == 20 * (summary["splits"]["train"]["segments"] - covered)
    audio = [m for m in msgs if isinstance(m.header, AudioHeader)]
    assert audio and all(m.header.samplerate == 16000 and m.header.frames == 320 and m.header.dtype == "float32"
                         for m in audio)
    pcm = np.concatenate([m.array()[:, 0] for m in audio])
    assert np.isfinite(pcm).all() and np.abs(pcm).max() <= 1.0 and pcm.std() > 1e-3
    for f in sorted((out / "train").glob("*.mcap")):
        text_hb = [m.t_ns for m in read_messages([f]) if isinstance(m.header, HeartbeatHeader)
                   and m.header.stream == "text"]
        assert np.diff(text_hb).max() <= 100_000_000  # windows can close without waiting for text
    assert kinds[("text", "TextHeader")] == sum(isinstance(m.header, TextHeader) for m in msgs)
    for topic_seqs in _seqs(msgs).values():
        assert topic_seqs == list(range(len(topic_seqs)))  # per-topic counters without gaps


def _seqs(msgs) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in msgs:
        out.setdefault(m.topic, []).append(m.header.seq)
    return {k: sorted(v) for k, v in out.items()}


def test_same_seed_same_messages_other_seed_differs(built, tmp_path):
    out, _ = built
    again = tmp_path / "b"
    avdigits.build(again, PARAMS)
    for split in avdigits.SPLITS:
        assert (out / split / "labels.csv").read_text() == (again / split / "labels.csv").read_text()
        assert _messages(out / split) == _messages(again / split)
    other = tmp_path / "c"
    avdigits.build(other, avdigits.Params(segments=6, seed=4, split="test"))
    assert sorted(p.name for p in other.iterdir()) == ["avdigits.json", "test"]
    assert (other / "test" / "labels.csv").read_text() != (out / "test" / "labels.csv").read_text()


def test_refuses_to_overwrite(built):
    out, _ = built
    with pytest.raises(ValueError, match="already holds a dataset"):
        avdigits.build(out, PARAMS)


def test_chat_lines_and_typos_are_deterministic():
    rng = np.random.default_rng(0)
    lines = [avdigits.chat_mention(7, rng)[0] for _ in range(200)]
    assert any("seven" in x or "7" in x for x in lines)
    assert any(("seven" not in x.lower() and "7" not in x) for x in lines)  # typos or wrong digits happen
    rng2 = np.random.default_rng(0)
    assert lines == [avdigits.chat_mention(7, rng2)[0] for _ in range(200)]


def test_segments_file_says_what_each_segment_holds(built):
    out, summary = built
    for split in avdigits.SPLITS:
        d = out / split
        labels = (d / "labels.csv").read_text().splitlines()[1:]
        rows = avdigits.read_segments([d / avdigits.SEGMENTS_FILE])
        flat = [r for rs in rows.values() for r in rs]
        # One row per label span, with the same source, times and label.
        assert sorted(f"{s},{r.start},{r.end},{r.label}" for s, rs in rows.items() for r in rs) == sorted(labels)
        assert sum(not r.camera for r in flat) == summary["splits"][split]["camera_covered"]
        assert sum(r.speech is None for r in flat) == summary["splits"][split]["mic_muted"]
        for r in flat:
            if r.speech:  # the audible digit lies inside its segment, 0.1-1.5 s long
                assert r.start <= r.speech[0] < r.speech[1] <= r.end
                assert 100_000_000 <= r.speech[1] - r.speech[0] <= 1_500_000_000
            if r.chat_time is not None:
                assert r.start <= r.chat_time < r.end and r.chat_names in avdigits.LABELS
    # The chat lines in the file are the text messages in the recording.
    d = out / "train"
    texts = {(m.t_ns, m.text()) for m in _messages(d) if isinstance(m.header, TextHeader)}
    with (d / avdigits.SEGMENTS_FILE).open() as f:
        chat = {(int(r["chat_time"]), r["chat"]) for r in csv.DictReader(f) if r["chat_time"]}
    assert chat <= texts


def test_audible_span_leaves_out_silence():
    from streamfuse.datasets import sound

    x = np.zeros(16000, dtype=np.float32)
    x[4000:8000] = np.sin(np.arange(4000) / 5.0)
    x[8000:8160] = 0.02 * np.sin(np.arange(160) / 5.0)  # -34 dB: below the 30 dB floor
    assert sound.audible_span(x) == (4000, 8000)
    assert sound.audible_span(np.zeros(800, dtype=np.float32)) == (0, 0)


def _row(start_s: float, label: str, *, camera: bool = True, occluded: bool = False,
         speech: tuple[float, float] | None = None, chat: tuple[float, str] | None = None) -> avdigits.SegmentRow:
    ns = NS_PER_S
    return avdigits.SegmentRow(int(start_s * ns), int((start_s + 2) * ns), label, camera, occluded,
                               None if speech is None else (int(speech[0] * ns), int(speech[1] * ns)),
                               None if chat is None else int(chat[0] * ns), None if chat is None else chat[1])


def test_window_evidence_names_what_shows_the_label():
    ns = NS_PER_S

    def ev(rows: list[avdigits.SegmentRow], start_s: float, label: str) -> str:
        return avdigits.window_evidence(rows, int(start_s * ns), ns, 5 * ns, label)

    assert ev([_row(0, "one")], 0.5, "one") == "camera"
    assert ev([_row(0, "one", occluded=True)], 0.5, "one") == "camera, finger over the digit"
    covered = [_row(0, "two", camera=False, speech=(1.2, 1.6))]
    assert ev(covered, 1.0, "two") == "speech"  # 0.4 s heard
    assert ev(covered, 0.5, "two") == "speech"  # 0.3 s heard
    assert ev(covered, 0.0, "two") == "none"  # the word comes after the window
    fragment = [_row(0, "two", camera=False, speech=(0.9, 1.3))]
    assert ev(fragment, 0.0, "two") == "speech fragment"  # 0.1 s heard
    # A chat line naming the label in the text context; one naming another digit does not count.
    chat = [_row(0, "three", chat=(0.5, "three")), _row(2, "three", camera=False, speech=(3.5, 3.9))]
    assert ev(chat, 2.0, "three") == "chat"
    wrong = [_row(0, "three", chat=(0.5, "eight")), _row(2, "three", camera=False, speech=(3.5, 3.9))]
    assert ev(wrong, 2.0, "three") == "none"
    # A window straddling two segments of the same digit: either one's camera counts.
    assert ev([_row(0, "four", camera=False), _row(2, "four")], 1.5, "four") == "camera"


def test_unreadable_segments_file_names_the_line(tmp_path):
    good = "source,start,end,label,image,speaker,camera,microphone,occluded,speech_start,speech_end,chat_time,chat_names,chat\n"
    p = tmp_path / "segments.csv"
    p.write_text(good + "room1,0,2000000000,one,5,lucas,1,1,0,,,,,\nroom1,2000000000,x,two,6,lucas,1,1,0,,,,,\n")
    with pytest.raises(avdigits.SegmentsError, match=r"segments.csv:3: .*'x'"):
        avdigits.read_segments([p])
    p.write_text("source,start,end\nroom1,0,1\n")
    with pytest.raises(avdigits.SegmentsError, match=r"segments.csv:1: missing column 'label'"):
        avdigits.read_segments([p])


def test_building_and_reading_report_progress(tmp_path, caplog):
    """Long work reports through the one progress helper: plain lines here (not a terminal)."""
    import logging

    from streamfuse.config import AlignConfig
    from streamfuse.fusion.features import Preprocessing
    from streamfuse.train.dataset import load_windows

    caplog.set_level(logging.INFO, logger="streamfuse.progress")
    avdigits.build(tmp_path / "p", avdigits.Params(segments=6, seed=1, split="test"))
    lines = [r.getMessage() for r in caplog.records if r.name == "streamfuse.progress"]
    assert lines[-1].startswith("avdigits: 6/6 segment (100 %), ") and lines[-1].endswith("(done)")
    caplog.clear()
    align = AlignConfig()
    prep = Preprocessing.from_align(align)
    ws = load_windows([tmp_path / "p" / "test"], align, prep, progress=True)
    done = [r.getMessage() for r in caplog.records if r.name == "streamfuse.progress"][-1]
    assert done.startswith("windows from recordings: ") and "s (100 %), " in done
    assert done.endswith(f", {ws.summary['windows']} windows (done)")
