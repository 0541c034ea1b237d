"""The log-mel augmentations for unseen speakers (streamfuse.train.loop: warp_logmel's speed,
vtlp and pitch, mix_logmel, the masks of augment): each keeps every window in its row (so
its label), the shape and the dtype, and a fixed seed reproduces it; at zero strength they
draw nothing from the random stream, so the default recipe's training is unchanged."""

from __future__ import annotations

import pytest
import torch

from streamfuse.fusion.features import Features
from streamfuse.train.loop import AudioAugment, augment, mix_logmel, warp_logmel

B, N_MELS, N_T = 6, 32, 51


def _logmel(seed: int = 0) -> torch.Tensor:
    # Smooth, like speech over a few bands and frames: random at a coarse grid, interpolated.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(B, 1, N_MELS // 4, N_T // 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(N_MELS, N_T), mode="bilinear",
                                        align_corners=True)
    return (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)


def _features(seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed + 1)
    return Features(frames=torch.randn(B, 2, 1, 16, 16, generator=g), logmel=_logmel(seed),
                    tokens=torch.zeros(0, dtype=torch.int64),
                    offsets=torch.zeros(B, dtype=torch.int64), mask=torch.ones(B, 3, dtype=torch.bool))


def _present() -> torch.Tensor:
    return torch.tensor([True, True, False, True, True, True])


AUGMENTS = {
    "speed": lambda x, g, s: warp_logmel(x, g, speed=0.15 * s),
    "vtlp": lambda x, g, s: warp_logmel(x, g, vtlp=0.1 * s),
    "pitch": lambda x, g, s: warp_logmel(x, g, pitch=1.5 * s),
    "mix": lambda x, g, s: mix_logmel(x, _present(), g, share=1.0 if s else 0.0,
                                      snr_db=(5.0, 20.0)),
}


def _nearest_rows(out: torch.Tensor, x: torch.Tensor) -> list[int]:
    d = torch.cdist(out.flatten(1), x.flatten(1))
    return d.argmin(dim=1).tolist()


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_keeps_rows_shape_dtype_and_is_seeded(name):
    fn = AUGMENTS[name]
    x = _logmel()
    out = fn(x.clone(), torch.Generator().manual_seed(3), 1.0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)  # it did something
    # each window stays in its row, closest to what it was (its label is still right)
    assert _nearest_rows(out, x) == list(range(B))
    again = fn(x.clone(), torch.Generator().manual_seed(3), 1.0)
    assert torch.equal(out, again)
    other = fn(x.clone(), torch.Generator().manual_seed(4), 1.0)
    assert not torch.equal(out, other)


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_off_is_identity_and_draws_nothing(name):
    x = _logmel()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert torch.equal(AUGMENTS[name](x, g, 0.0), x)
    assert torch.equal(g.get_state(), state)


def test_warp_moves_energy_the_right_way():
    # One band lit: a pitch shift moves it by up to 1.5 bands; a speed-up squeezes time.
    x = torch.zeros(64, 1, N_MELS, N_T)
    x[:, :, 10, :] = 1.0
    out = warp_logmel(x, torch.Generator().manual_seed(0), pitch=1.5)
    peak = out[:, 0, :, N_T // 2].argmax(dim=1).float()
    assert ((peak - 10).abs() <= 2).all() and peak.unique().numel() > 1
    y = torch.zeros(64, 1, N_MELS, N_T)
    y[:, :, :, 20:31] = 1.0  # a 11-frame word in the middle
    width = (warp_logmel(y, torch.Generator().manual_seed(0), speed=0.3)[:, 0, 5] > 0.5).sum(1)
    assert width.min() < 11 < width.max() + 1 and (width >= 7).all() and (width <= 16).all()


def test_mix_only_where_audio_is_present_and_restandardises():
    x = _logmel()
    out = mix_logmel(x, _present(), torch.Generator().manual_seed(1), share=1.0,
                     snr_db=(5.0, 5.0))
    assert torch.equal(out[2], x[2])  # no audio in that window: left alone
    changed = [i for i in range(B) if not torch.equal(out[i], x[i])]
    assert changed
    for i in changed:
        assert abs(float(out[i].mean())) < 1e-4 and abs(float(out[i].std(unbiased=False)) - 1) < 1e-3


def test_masks_count_and_augment_contract():
    f = _features()
    g = torch.Generator().manual_seed(2)
    out = augment(f, g, audio=AudioAugment(masks=3, speed=0.1, vtlp=0.1, pitch=1, mix=0.5))
    assert out.logmel.shape == f.logmel.shape and out.logmel.dtype == torch.float32
    assert out.frames.shape == f.frames.shape and torch.equal(out.mask, f.mask)
    again = augment(f, torch.Generator().manual_seed(2),
                    audio=AudioAugment(masks=3, speed=0.1, vtlp=0.1, pitch=1, mix=0.5))
    assert torch.equal(out.logmel, again.logmel) and torch.equal(out.frames, again.frames)
    # more masks zero more of the log-mel than none
    zeros = {k: int((augment(f, torch.Generator().manual_seed(2),
                             audio=AudioAugment(masks=k)).logmel == 0).sum()) for k in (0, 4)}
    assert zeros[4] > zeros[0]
    # the defaults are the recipe before these options existed: one mask, nothing else drawn
    base = augment(f, torch.Generator().manual_seed(7))
    explicit = augment(f, torch.Generator().manual_seed(7), audio=AudioAugment())
    assert torch.equal(base.logmel, explicit.logmel)
