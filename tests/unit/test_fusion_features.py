"""Preprocessing: collate (CPU) and to_device, tokenizer, batcher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from streamfuse.config import AlignConfig
from streamfuse.fusion.batcher import Batcher
from streamfuse.fusion.features import (
    Preprocessing,
    PreprocessingError,
    collate,
    to_device,
    tokenize,
)
from tests.helpers.fusion import (
    SAMPLE_RATE,
    make_window,
    one_torch_thread,  # noqa: F401
    tiny_prep,
)


@pytest.fixture
def prep() -> Preprocessing:
    return tiny_prep()


def test_collate_shapes_and_presence(prep):
    rng = np.random.default_rng(0)
    ws = [make_window(rng, index=0), make_window(rng, index=1, video=False),
          make_window(rng, index=2, audio=False, jpeg=True), make_window(rng, index=3, text=False),
          make_window(rng, index=4, video=False, audio=False, text=False)]
    raw = collate(ws, prep)
    assert raw.frames.shape == (5, 4, 16, 16) and raw.frames.dtype == torch.uint8
    assert raw.audio.shape == (5, prep.window_samples) and raw.audio.dtype == torch.float32
    assert raw.mask.tolist() == [[True, True, True], [False, True, True], [True, False, True],
                                 [True, True, False], [False, False, False]]
    assert raw.problems == ()
    assert int(raw.frames[1].sum()) == 0 and float(raw.audio[2].abs().sum()) == 0.0
    lengths = torch.diff(torch.cat([raw.offsets, torch.tensor([raw.tokens.numel()])])).tolist()
    assert lengths[3] == lengths[4] == 0 and all(n > 0 for n in lengths[:3])
    f = to_device(raw, prep)
    assert f.frames.shape == (5, 4, 1, 16, 16)
    assert f.logmel.shape == (5, 1, prep.n_mels, prep.n_mel_frames)
    assert torch.isfinite(f.frames).all() and torch.isfinite(f.logmel).all()
    # per-frame standardisation: zero mean, unit std for present frames
    assert f.frames[0].mean(dim=(1, 2, 3)).abs().max() < 1e-4


def test_jpeg_and_raw_frames_agree(prep):
    """The same picture sent raw or as a high-quality JPEG gives nearly the same input."""
    a = make_window(np.random.default_rng(3), label=1)
    b = make_window(np.random.default_rng(3), label=1, jpeg=True)
    fa, fb = collate([a], prep).frames.float(), collate([b], prep).frames.float()
    assert (fa - fb).abs().mean() < 8  # JPEG loss on noisy 8-bit pixels


def test_undecodable_frame_marks_video_absent(prep):
    w = make_window(np.random.default_rng(0), jpeg=True)
    w.frames[1] = b"\xff\xd8not a jpeg"
    raw = collate([w], prep)
    assert raw.mask.tolist() == [[False, True, True]]
    assert len(raw.problems) == 1 and "did not decode" in raw.problems[0]


def test_audio_at_another_rate_is_resampled_on_the_device(prep):
    def tone(rate: int) -> np.ndarray:
        t = np.arange(rate) / rate  # one second
        return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1300 * t)).astype(np.float32)[:, None]

    w = make_window(np.random.default_rng(0))
    same = dataclasses.replace(w, audio=tone(SAMPLE_RATE), samplerate=SAMPLE_RATE)
    other = dataclasses.replace(w, audio=tone(3 * SAMPLE_RATE), samplerate=3 * SAMPLE_RATE)
    raw = collate([same, other], prep)
    assert [(r, sr) for r, sr, _ in raw.resample] == [(1, 3 * SAMPLE_RATE)]
    assert raw.mask[:, 1].all()
    f = to_device(raw, prep)
    sim = torch.nn.functional.cosine_similarity(f.logmel[0].flatten(), f.logmel[1].flatten(), dim=0)
    assert sim > 0.99


def test_unreasonable_sample_rates_are_refused_not_resampled(prep):
    w = make_window(np.random.default_rng(0))
    for rate in (44_101, 500, 10_000_000):  # gcd 1 with 4 kHz, too low, too high
        odd = dataclasses.replace(w, samplerate=rate)
        raw = collate([odd], prep)
        assert raw.mask.tolist() == [[True, False, True]] and raw.resample == ()
        assert "cannot resample" in raw.problems[0]
    ok = collate([dataclasses.replace(w, samplerate=44_100)], prep)
    assert ok.mask[0, 1] and ok.resample


def test_stereo_is_mixed_to_mono(prep):
    w = make_window(np.random.default_rng(0))
    stereo = dataclasses.replace(w, audio=np.concatenate([w.audio, w.audio], axis=1))
    assert torch.equal(collate([w], prep).audio, collate([stereo], prep).audio)


def test_select_keeps_rows_consistent(prep):
    rng = np.random.default_rng(0)
    ws = [make_window(rng, index=i, text=i % 2 == 0, samplerate=SAMPLE_RATE * (1 + i % 3 == 0))
          for i in range(5)]
    raw = collate(ws, prep)
    sub = raw.select([4, 1, 2])
    direct = collate([ws[4], ws[1], ws[2]], prep)
    for name in ("frames", "audio", "tokens", "offsets", "mask"):
        assert torch.equal(getattr(sub, name), getattr(direct, name)), name
    assert [(r, sr) for r, sr, _ in sub.resample] == [(r, sr) for r, sr, _ in direct.resample]


def test_tokenize_is_deterministic_and_bounded(prep):
    ids = tokenize(["Seven seven", "sevn"], prep)
    assert ids.dtype == np.int64 and ids.min() >= 1 and ids.max() < prep.text_buckets
    assert np.array_equal(ids, tokenize(["seven SEVEN", "sevn"], prep))  # case-insensitive
    long = tokenize(["word " * 500], prep)
    assert long.size == prep.max_tokens
    assert tokenize([], prep).size == 0 and tokenize(["!!!"], prep).size == 0


def test_preprocessing_round_trip_and_validation():
    p = Preprocessing.from_align(AlignConfig(window_ms=500, frames_per_window=3), sample_rate=8000)
    assert (p.window_samples, p.frames_per_window) == (4000, 3)
    assert Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(PreprocessingError, match="preprocessing.bogus"):
        Preprocessing.from_dict({**p.to_dict(), "bogus": 1})
    with pytest.raises(PreprocessingError, match="preprocessing.image_size"):
        Preprocessing.from_dict({**p.to_dict(), "image_size": "big"})
    with pytest.raises(PreprocessingError, match="frame_norm"):
        Preprocessing(frame_norm="magic")


# ----------------------------------------------------------------------------- batcher


def _two_sources_heard(b: Batcher, rng) -> None:
    """Windows 0 of sources a and b, answered: both are expected from now on."""
    b.push(make_window(rng, source="a", index=0), now_ns=0)
    b.push(make_window(rng, source="b", index=0), now_ns=0)
    assert len(b.pop_batch(0)) == 2


def test_batcher_full_batch_goes_at_once():
    b = Batcher(max_batch=3, max_delay_ns=1_000)
    rng = np.random.default_rng(0)
    _two_sources_heard(b, rng)
    for i in range(1, 5):
        assert b.push(make_window(rng, source="a", index=i), now_ns=100)
    batch = b.pop_batch(100)
    assert [p.window.seq for p in batch] == [1, 2, 3]
    assert b.pop_batch(100) == [] and len(b) == 1  # source b's window 4 may still come


def test_batcher_deadline_from_the_oldest():
    b = Batcher(max_batch=8, max_delay_ns=1_000)
    rng = np.random.default_rng(0)
    _two_sources_heard(b, rng)
    b.push(make_window(rng, source="a", index=1), now_ns=100)
    b.push(make_window(rng, source="a", index=2), now_ns=900)
    assert b.next_deadline() == 1_100
    assert b.pop_batch(1_099) == []  # source b's window 1 may still come
    assert [p.arrived_ns for p in b.pop_batch(1_100)] == [100, 900]
    assert b.next_deadline() is None and b.room == 8


def test_batcher_goes_once_every_expected_source_has_its_window():
    b = Batcher(max_batch=8, max_delay_ns=10**12)
    rng = np.random.default_rng(0)
    _two_sources_heard(b, rng)
    b.push(make_window(rng, source="a", index=1), now_ns=100)
    assert b.pop_batch(100) == []
    b.push(make_window(rng, source="b", index=1), now_ns=200)
    assert [p.window.source for p in b.pop_batch(200)] == ["a", "b"]


def test_batcher_one_source_never_waits():
    b = Batcher(max_batch=8, max_delay_ns=10**12)
    rng = np.random.default_rng(0)
    for i in range(3):
        b.push(make_window(rng, index=i), now_ns=i)
        assert [p.window.seq for p in b.pop_batch(i)] == [i]


def test_batcher_stops_expecting_a_quiet_source():
    b = Batcher(max_batch=8, max_delay_ns=10**12, horizon_ns=1_000_000_000)
    rng = np.random.default_rng(0)
    _two_sources_heard(b, rng)  # b's last window starts at 0
    b.push(make_window(rng, source="a", index=2), now_ns=100)  # starts at 1 s: b is 1 s behind, still expected
    assert b.pop_batch(100) == []
    assert len(b.drain()) == 1
    b.push(make_window(rng, source="a", index=3), now_ns=200)  # starts at 1.5 s: b has gone quiet
    assert len(b.pop_batch(200)) == 1


def test_batcher_refuses_a_queued_duplicate_and_drains():
    b = Batcher(max_batch=2, max_delay_ns=10**12)
    rng = np.random.default_rng(0)
    w = make_window(rng, index=5)
    assert b.push(w, 0) and not b.push(w, 1)
    assert b.room == 1
    assert [p.window.key for p in b.drain()] == [w.key]
    assert b.push(w, 2)  # once answered, the key may come again (a replay)


def test_batcher_zero_delay_sends_each_window():
    b = Batcher(max_batch=8, max_delay_ns=0)
    b.push(make_window(np.random.default_rng(0)), 5)
    assert len(b.pop_batch(5)) == 1


def test_per_band_audio_norm_removes_each_bands_mean_and_travels_in_the_manifest():
    import torch

    from streamfuse.fusion.features import Preprocessing, log_mel

    prep = Preprocessing(n_mels=16, hop_length=320, audio_norm="per_band")
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, prep.window_samples, generator=g)
    x = log_mel(audio, prep)
    assert x.shape == (2, 1, 16, prep.n_mel_frames) and x.dtype == torch.float32
    assert x.mean(dim=3).abs().max() < 1e-4  # every band's mean over time is 0
    assert torch.allclose(x.std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
