"""The cross-validation's pieces that need no training (streamfuse.train.crossval): which
group a window belongs to from a per-segment table, the windows that span two groups, the
fold summary and its table; and avdigits' speech windows (where audio alone is scored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfuse.datasets import avdigits
from streamfuse.train import crossval
from streamfuse.train.dataset import DataError

S = 1_000_000_000


def _table(tmp_path: Path) -> Path:
    p = tmp_path / "segments.csv"
    p.write_text("source,start,end,speaker,image\n"
                 f"room1,{0 * S},{2 * S},ann,7\n"
                 f"room1,{2 * S},{4 * S},bob,8\n"
                 f"room2,{0 * S},{2 * S},cy,\n")
    return p


def test_window_groups_from_the_segment_table(tmp_path: Path):
    table = crossval.read_segment_table([_table(tmp_path)])
    keys = [("room1", 0), ("room1", S // 2), ("room1", 3 * S // 2), ("room1", 2 * S),
            ("room2", S), ("room3", 0)]
    speakers = crossval.window_values(table, keys, S, "speaker")
    assert speakers == [frozenset({"ann"}), frozenset({"ann"}), frozenset({"ann", "bob"}),
                        frozenset({"bob"}), frozenset({"cy"}), frozenset()]
    assert crossval.single_group(speakers) == ["ann", "ann", None, "bob", "cy", None]
    images = crossval.window_values(table, keys, S, "image")
    assert images[2] == frozenset({"7", "8"}) and images[4] == frozenset()  # empty left out
    with pytest.raises(DataError, match="no column 'accent'"):
        crossval.window_values(table, keys, S, "accent")


def test_table_errors_name_the_file_and_line(tmp_path: Path):
    p = tmp_path / "bad.csv"
    p.write_text("source,start,end\nroom1,0,x\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        crossval.read_segment_table([p])
    q = tmp_path / "nostart.csv"
    q.write_text("source,end\nroom1,5\n")
    with pytest.raises(DataError, match="missing column 'start'"):
        crossval.read_segment_table([q])


def _fold(group: str, acc: float, single: float, ece: float, audio: float | None) -> dict:
    return {"group": group, "val_group": "x", "n_train": 10, "n_val": 3, "n_test": 4,
            "dropped_train": 0, "accuracy": acc, "ece": ece, "best_single": "video",
            "best_single_accuracy": single, "val_accuracy": 0.9, "best_epoch": 3,
            "epochs_run": 5, "train_seconds": 12.0,
            "focus": {"audio": {"n": 0 if audio is None else 7, "accuracy": audio}}}


def test_summary_mean_worst_and_table():
    folds = [_fold("ann", 0.9, 0.8, 0.02, 0.7), _fold("bob", 0.7, 0.75, 0.05, None),
             _fold("cy", 0.8, 0.6, 0.01, 0.9)]
    s = crossval.summarise(folds)
    assert s["mean"]["accuracy"] == pytest.approx(0.8)
    assert s["worst"]["accuracy"] == 0.7 and s["worst"]["ece"] == 0.05
    assert s["mean"]["focus"]["audio"] == pytest.approx(0.8)  # a fold without speech: left out
    assert s["worst"]["focus"]["audio"] == 0.7
    assert s["fused_beats_best_single"] == "2/3"
    md = crossval.markdown({"folds": folds, "column": "speaker", **s})
    assert md.startswith("# Leave-one-speaker-out cross-validation")
    assert "| ann | x | 10 / 3 / 4 | 90.0 | 2.0 | 80.0 (video) | 70.0 (7) |" in md
    assert "| **mean** |  |  | 80.0 |" in md and "| **worst** |  |  | 70.0 | 5.0 |" in md


def test_speech_windows_need_150_ms_of_the_spoken_label():
    row = avdigits.SegmentRow(0, 2 * S, "seven", True, False, (S // 2, S), None, None)
    muted = avdigits.SegmentRow(2 * S, 4 * S, "seven", True, False, None, None, None)
    segs = {"room1": [row, muted]}
    keys = [("room1", 0), ("room1", 0), ("room1", 9 * S // 10), ("room1", 2 * S)]
    got = avdigits.speech_windows(segs, keys, ["seven", "two", "seven", "seven"], S)
    # all of it; another label; 100 ms of it; microphone muted
    assert got == [True, False, False, False]
    keys.append(("room1", 3 * S // 4))  # 250 ms of it: enough, but not the whole word
    labels = ["seven", "two", "seven", "seven", "seven"]
    assert avdigits.speech_windows(segs, keys, labels, S)[4]
    assert avdigits.speech_windows(segs, keys, labels, S, whole=True) == [
        True, False, False, False, False]


def test_set_overrides_training_options():
    from streamfuse.commands.crossval import with_settings
    from streamfuse.config import AlignConfig
    from streamfuse.train.loop import TrainOptions
    from streamfuse.usage import UsageError

    opts = with_settings(TrainOptions(), ["n_mels=64", "audio_channels=32,64,128", "lr=0.001",
                                          "augment=false", "audio_norm=per_band"])
    assert (opts.n_mels, opts.audio_channels, opts.lr) == (64, (32, 64, 128), 0.001)
    assert opts.augment is False and opts.audio_norm == "per_band"
    narrow = with_settings(TrainOptions(), ["f_max=4000"])
    assert narrow.f_max == 4000.0
    prep = narrow.preprocessing(AlignConfig())
    assert prep.f_max == 4000.0  # saved in the artifact: the worker computes the same log-mel
    assert TrainOptions().preprocessing(AlignConfig()).f_max == 0.0  # default: the whole band
    for bad in ("n_mels", "colour=red", "n_mels=many", "augment=maybe"):
        with pytest.raises(UsageError, match="--set"):
            with_settings(TrainOptions(), [bad])
