"""Synthetic espeak-ng voices as extra training speakers (issue 21): ``streamfuse dataset
avdigits --speech DIR --synthetic-voices N --synthetic-segments M`` adds M train segments
spoken by ``espeak:VOICE`` speakers and leaves every other segment as it was;
``streamfuse crossval --train-only espeak:`` trains on them in every fold and never tests or
validates on them.

Fast and without espeak-ng or real media: a directory of generated FSDD-style wavs and a fake
``sound.espeak``."""

from __future__ import annotations

import csv
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from streamfuse.cli import main
from streamfuse.datasets import avdigits, sound
from streamfuse.datasets.images import DigitImages
from streamfuse.train import crossval
from streamfuse.train.dataset import DataError

SPEAKERS = ("ann", "bob", "cy")


def _speech_dir(root: Path) -> Path:
    """Three speakers with one 0.3 s, 8 kHz tone per digit, named like FSDD."""
    root.mkdir()
    t = np.arange(2400) / 8000
    for k, who in enumerate(SPEAKERS):
        for d in range(10):
            x = 0.5 * np.sin(2 * np.pi * (200 + 40 * d + 15 * k) * t)
            with wave.open(str(root / f"{d}_{who}_0.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes((x * 32767).astype("<i2").tobytes())
    return root


@pytest.fixture
def fake_espeak(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int, int]]:
    """Replaces espeak-ng with a tone; records (text, voice, speed, pitch) of each call."""
    calls: list[tuple[str, str, int, int]] = []

    def espeak(text: str, voice: str, *, speed: int, pitch: int) -> np.ndarray:
        calls.append((text, voice, speed, pitch))
        t = np.arange(sound.RATE_HZ // 3) / sound.RATE_HZ
        return (0.3 * np.sin(2 * np.pi * (150 + pitch) * t)).astype(np.float32)

    monkeypatch.setattr(sound, "espeak", espeak)
    return calls


def _images() -> DigitImages:
    labels = np.arange(300) % 10
    return DigitImages(np.zeros((300, 8, 8), np.float32), labels.astype(np.int64), "fake")


def test_params_check_the_synthetic_counts():
    base = avdigits.Params(speech="dir")
    assert base.synthetic() == ()
    assert "synthetic_voices" not in base.summary()  # avdigits.json as before the option
    with_voices = avdigits.Params(speech="dir", synthetic_voices=3, synthetic_segments=10)
    assert with_voices.synthetic() == sound.SYNTHETIC_VOICES[:3]
    assert with_voices.summary()["synthetic_segments"] == 10
    for bad, why in [(dict(synthetic_voices=2), "need synthetic segments"),
                     (dict(synthetic_segments=5), "need synthetic segments"),
                     (dict(synthetic_voices=99, synthetic_segments=5), "at most 16"),
                     (dict(synthetic_voices=-1, synthetic_segments=5), "negative"),
                     (dict(synthetic_voices=2, synthetic_segments=5, speech=None), "directory"),
                     (dict(synthetic_voices=2, synthetic_segments=5, split="test"), "train"),
                     (dict(synthetic_full_band=True), "full band is for synthetic voices")]:
        with pytest.raises(ValueError, match=why):
            avdigits.Params(**{"speech": "dir", **bad}).synthetic()


def test_synthetic_segments_follow_the_train_split_and_change_nothing_else():
    params = avdigits.Params(segments=40, seed=2)
    voices = ["espeak:en+m3", "espeak:en-us+f2"]
    before = avdigits.plan(params, _images(), list(SPEAKERS))
    plans = avdigits.plan(
        avdigits.Params(segments=40, seed=2, synthetic_voices=2, synthetic_segments=15),
        _images(), list(SPEAKERS), voices)
    assert [p.name for p in plans] == list(avdigits.SPLITS)
    train, old = plans[0], before[0]
    n = len(old.segments)
    assert train.segments[:n] == old.segments  # the recorded speakers' segments are untouched
    added = train.segments[n:]
    assert len(added) == 15 and {s.speaker for s in added} == set(voices)
    assert [s.index for s in train.segments] == list(range(n + 15))  # own per-segment streams
    assert {s.image for s in added} <= set(train.image_pool)  # no val/test handwriting
    assert train.speakers == old.speakers + sorted(voices)
    assert sorted(np.bincount([s.digit for s in added], minlength=10)) == [1] * 5 + [2] * 5
    for p, q in zip(plans[1:], before[1:], strict=True):
        assert p.segments == q.segments and p.speakers == q.speakers
        assert not {s.speaker for s in p.segments} & set(voices)


def test_speech_bank_speaks_synthetic_voices_with_espeak(tmp_path, fake_espeak):
    bank = sound.SpeechBank(str(_speech_dir(tmp_path / "fsdd")),
                            ["espeak:en+m3", "espeak:en-us+f2"])
    assert bank.speakers == list(SPEAKERS)  # the recorded speakers only: the splits use these
    assert bank.synthetic_speakers == ["espeak:en+m3", "espeak:en-us+f2"]
    rng = np.random.default_rng(0)
    assert bank.utterance("bob", 4, rng).size and fake_espeak == []
    x = bank.utterance("espeak:en-us+f2", 7, rng)
    assert x.dtype == np.float32 and x.size
    assert [(text, voice) for text, voice, _, _ in fake_espeak] == [("seven", "en-us+f2")]
    assert "espeak-ng" in bank.origin
    plain = sound.SpeechBank(str(tmp_path / "fsdd"))
    assert plain.synthetic_speakers == [] and plain.origin == str(tmp_path / "fsdd")
    with pytest.raises(ValueError, match="directory of recorded speech"):
        sound.SpeechBank(None, ["espeak:en+m3"])
    with pytest.raises(ValueError, match="unknown synthetic voices"):
        sound.SpeechBank(str(tmp_path / "fsdd"), ["en+m3"])


def test_flite_voices_follow_the_espeak_ones_and_speak_through_flite(tmp_path, fake_espeak,
                                                                      monkeypatch):
    assert sound.SYNTHETIC_VOICES[:12] == tuple("espeak:" + v for v in sound.ESPEAK_VOICES)
    assert sound.SYNTHETIC_VOICES[12:] == ("flite:kal16", "flite:awb", "flite:rms", "flite:slt")
    calls = []

    def flite(text: str, voice: str, *, speed: int, pitch: int) -> np.ndarray:
        calls.append((text, voice))
        return np.full(sound.RATE_HZ // 4, 0.25, np.float32)

    monkeypatch.setattr(sound, "flite", flite)
    bank = sound.SpeechBank(str(_speech_dir(tmp_path / "fsdd")), ["flite:awb", "espeak:en+m3"])
    assert bank.origin.endswith("+ flite + espeak-ng (2 voices)")
    rng = np.random.default_rng(1)
    assert bank.utterance("flite:awb", 3, rng).size and bank.utterance("espeak:en+m3", 2, rng).size
    assert calls == [("three", "awb")] and [c[:2] for c in fake_espeak] == [("two", "en+m3")]


def test_synthetic_voices_are_heard_through_the_recorded_speakers_band(tmp_path, monkeypatch):
    """FSDD's wavs are 8 kHz: what a synthetic voice has above 4 kHz is not what a recorded
    speaker can have, so the bank cuts it (unless full_band)."""
    t = np.arange(sound.RATE_HZ // 2) / sound.RATE_HZ
    tones = (0.3 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t))
    monkeypatch.setattr(sound, "espeak", lambda *a, **k: tones.astype(np.float32))
    speech = str(_speech_dir(tmp_path / "fsdd"))

    def share_above_4k(full_band: bool) -> float:
        bank = sound.SpeechBank(speech, ["espeak:en+m3"], full_band=full_band)
        assert bank.rate_hz == 8000
        x = bank.utterance("espeak:en+m3", 1, np.random.default_rng(0))
        assert x.dtype == np.float32
        power = np.abs(np.fft.rfft(x)) ** 2
        return float(power[np.fft.rfftfreq(len(x), 1 / sound.RATE_HZ) > 4000].sum() / power.sum())

    assert share_above_4k(full_band=False) < 0.001
    assert share_above_4k(full_band=True) > 0.2
    assert avdigits.Params(speech=speech, synthetic_voices=1, synthetic_segments=2,
                           synthetic_full_band=True).summary()["synthetic_full_band"] is True


def _f0(x: np.ndarray) -> float:
    """The F0 in Hz of the loudest 40 ms of ``x`` (autocorrelation peak, 40-400 Hz)."""
    n = 640
    i = int(np.argmax(np.convolve(x**2, np.ones(n), "same")))
    seg = x[max(0, i - n // 2):i + n // 2]
    ac = np.correlate(seg, seg, "full")[len(seg) - 1:]
    return sound.RATE_HZ / (int(np.argmax(ac[40:400])) + 40)


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite (scripts/setup.sh)")
def test_real_flite_speaks_a_digit_at_the_speed_and_pitch_asked():
    slow = sound.flite("seven", "awb", speed=130, pitch=30)
    fast = sound.flite("seven", "awb", speed=200, pitch=70)
    for x in (slow, fast):
        assert x.dtype == np.float32 and 0.05 < float(np.abs(x).max()) <= 1.0
    assert len(slow) > 1.3 * len(fast)  # duration scaled by 200 / 130
    assert _f0(fast) > 1.3 * _f0(slow)  # mean F0 106 -> 154 Hz
    with pytest.raises(ValueError, match="flite voice 'nobody' is not one of kal16"):
        sound.flite("seven", "nobody", speed=165, pitch=50)


def _rows(d: Path) -> list[dict[str, str]]:
    with (d / avdigits.SEGMENTS_FILE).open() as f:
        return list(csv.DictReader(f))


def test_built_data_set_names_the_synthetic_voices_in_segments_csv(tmp_path, fake_espeak):
    speech = str(_speech_dir(tmp_path / "fsdd"))
    plain = avdigits.Params(segments=20, seed=1, speech=speech, segments_per_file=5)
    mixed = avdigits.Params(segments=20, seed=1, speech=speech, segments_per_file=5,
                            synthetic_voices=2, synthetic_segments=6)
    avdigits.build(tmp_path / "plain", plain)
    assert fake_espeak == []
    summary = avdigits.build(tmp_path / "mixed", mixed)
    voices = {"espeak:" + v for v in sound.ESPEAK_VOICES[:2]}
    train = _rows(tmp_path / "mixed" / "train")
    before = _rows(tmp_path / "plain" / "train")
    assert train[:len(before)] == before and len(train) == len(before) + 6
    assert {r["speaker"] for r in train[len(before):]} == voices
    assert set(summary["splits"]["train"]["speakers"]) >= voices
    assert summary["params"]["synthetic_voices"] == 2
    for split in ("val", "test"):  # byte for byte as without synthetic voices
        for p in sorted((tmp_path / "plain" / split).iterdir()):
            assert p.read_bytes() == (tmp_path / "mixed" / split / p.name).read_bytes(), p
    # The train recordings that hold only recorded speakers' segments are the same files too
    # (the last one, not full, gains synthetic segments).
    full = sorted((tmp_path / "plain" / "train").glob("*.mcap"))[:len(before) // 5]
    assert full
    for p in full:
        assert p.read_bytes() == (tmp_path / "mixed" / "train" / p.name).read_bytes(), p


@pytest.mark.parametrize("argv", [
    ["--synthetic-voices", "2"],  # no --speech
    ["--speech", "{speech}", "--synthetic-segments", "10"],  # no voices
    ["--speech", "{speech}", "--synthetic-voices", "17"],
    ["--speech", "{speech}", "--synthetic-voices", "2", "--split", "test"],
])
def test_dataset_command_refuses_synthetic_voices_it_cannot_add(argv, tmp_path, capsys):
    speech = str(_speech_dir(tmp_path / "fsdd"))
    out = tmp_path / "out"
    argv = [speech if a == "{speech}" else a for a in argv]
    assert main(["dataset", "avdigits", "--out", str(out), "--segments", "10", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("streamfuse dataset: --synthetic-voices: ")
    assert not out.exists() or not any(out.iterdir())


def test_train_only_groups_train_in_every_fold_and_never_test():
    groups = ["ann", "bob", "cy", "espeak:a", "espeak:b", None, "ann", "espeak:a", "dee"]
    folds = crossval.leave_one_group_out(groups, None, ["espeak:a", "espeak:b"])
    assert [(f.group, f.val_group) for f in folds] == [
        ("ann", "bob"), ("bob", "cy"), ("cy", "dee"), ("dee", "ann")]
    synthetic = {3, 4, 7}
    for f in folds:
        assert synthetic <= set(f.train)
    # Without the option they are ordinary groups with folds of their own.
    assert len(crossval.leave_one_group_out(groups)) == 6
    # Two groups to test and validate, and a third to train, are still needed.
    assert len(crossval.leave_one_group_out(["ann", "bob", "espeak:a"], None, ["espeak:a"])) == 2
    with pytest.raises(DataError, match=r"2 of them not training-only, found 3: .* \(2 training-only\)"):
        crossval.leave_one_group_out(["ann", "espeak:a", "espeak:b"], None, ["espeak:a",
                                                                            "espeak:b"])
    with pytest.raises(DataError, match="at least 3 groups"):
        crossval.leave_one_group_out(["ann", "bob"], None, [])


def test_train_only_disjoint_values_are_still_dropped():
    groups = ["ann", "bob", "cy", "espeak:a", "espeak:a"]
    disjoint = [{"7"}, {"8"}, {"9"}, {"7"}, {"1"}]
    fold = crossval.leave_one_group_out(groups, disjoint, ["espeak:a"])[0]
    assert fold.group == "ann" and fold.train == (2, 4) and fold.dropped == 1


def test_markdown_names_the_train_only_groups():
    fold = {"group": "ann", "val_group": "bob", "n_train": 10, "n_val": 3, "n_test": 4,
            "dropped_train": 0, "accuracy": 0.5, "ece": 0.1, "best_single": "audio",
            "best_single_accuracy": 0.5, "val_accuracy": 0.6, "best_epoch": 3,
            "epochs_run": 5, "train_seconds": 1.0, "focus": {}}
    report = {"folds": [fold], **crossval.summarise([fold])}
    assert "Training only" not in crossval.markdown(report)
    report["train_only"] = ["espeak:a", "espeak:b"]
    assert ("Training only, in every fold (never tested or validating): espeak:a, espeak:b."
            in crossval.markdown(report))
