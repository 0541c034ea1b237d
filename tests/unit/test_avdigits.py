"""`streamfuse dataset avdigits`: layout, split hygiene, stream contents and determinism.

Built from what ships with the code (scikit-learn digits, espeak-ng, generated
noise), so it runs without ../shared/data.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

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
    lines = [avdigits.chat_line(7, rng) for _ in range(200)]
    assert any("seven" in x or "7" in x for x in lines)
    assert any(("seven" not in x.lower() and "7" not in x) for x in lines)  # typos or wrong digits happen
    rng2 = np.random.default_rng(0)
    assert lines == [avdigits.chat_line(7, rng2) for _ in range(200)]
