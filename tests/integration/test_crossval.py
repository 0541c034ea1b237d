"""`streamfuse crossval` as a real process on a tiny avdigits set spoken by three espeak-ng
voices (written as FSDD-style wavs, so each voice is one speaker): one fold per speaker, each
tested on a speaker its model never heard, and a report with sane numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from streamfuse.datasets import avdigits, sound

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VOICES = {"ann": "en-us+f2", "bob": "en+m3", "cy": "en-gb-scotland+m2"}


def _speech_dir(d: Path) -> Path:
    d.mkdir()
    for name, voice in VOICES.items():
        for digit, word in enumerate(sound.DIGIT_WORDS):
            x = sound.trim_silence(sound.espeak(word, voice, speed=160, pitch=50))
            with wave.open(str(d / f"{digit}_{name}_0.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(sound.RATE_HZ)
                w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return d


def test_one_fold_per_speaker_with_sane_numbers(tmp_path: Path):
    data = tmp_path / "avdigits"
    avdigits.build(data, avdigits.Params(segments=40, seed=5, segments_per_file=50,
                                         speech=str(_speech_dir(tmp_path / "speech"))))
    out = tmp_path / "cv"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", STREAMFUSE_LOG="WARNING")
    env.pop("STREAMFUSE_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", "streamfuse", "crossval", "--recordings", str(data),
                        "--by", "speaker", "--disjoint", "image", "--out", str(out),
                        "--epochs", "4", "--batch-size", "16", "--speed", "0.1", "--mix", "0.3", "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "crossval.json").read_text())
    folds = report["folds"]
    assert [f["group"] for f in folds] == sorted(VOICES)
    assert sorted(f["val_group"] for f in folds) == sorted(VOICES)
    assert report["column"] == "speaker" and report["disjoint"] == ["image"]
    assert report["options"]["speed"] == 0.1 and report["options"]["mix"] == 0.3
    for f in folds:
        assert f["n_train"] > 0 and f["n_val"] > 0 and f["n_test"] > 0
        assert f["val_group"] != f["group"]
        for key in ("accuracy", "ece", "best_single_accuracy", "val_accuracy"):
            assert 0.0 <= f[key] <= 1.0, (key, f)
        assert set(f["alone"]) == {"video", "audio", "text"}
        some, whole = (f["focus"][k]["n"] for k in ("audio alone, >= 150 ms of the word",
                                                      "audio alone, all of the word"))
        assert some >= whole and some > 0
    assert report["mean"]["accuracy"] == pytest.approx(
        sum(f["accuracy"] for f in folds) / len(folds))
    assert report["worst"]["accuracy"] == min(f["accuracy"] for f in folds)
    table = (out / "crossval.md").read_text()
    assert "| **mean** |" in table and "| **worst** |" in table
    assert all(f"| {name} |" in table for name in VOICES)
    assert table.strip() in r.stdout


def test_refuses_a_column_that_is_not_there(tmp_path: Path):
    data = tmp_path / "avdigits"
    avdigits.build(data, avdigits.Params(segments=12, seed=5, segments_per_file=50))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", STREAMFUSE_LOG="WARNING")
    env.pop("STREAMFUSE_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", "streamfuse", "crossval", "--recordings", str(data),
                        "--by", "accent", "--out", str(tmp_path / "cv"), "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "no column 'accent'" in r.stderr
