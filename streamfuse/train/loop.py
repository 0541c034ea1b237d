"""``streamfuse train``: recordings + labels -> a model artifact (README.md).

Data: windows from the offline aligner with the config's ``[align]``
parameters, labelled and featurised once (:mod:`streamfuse.train.dataset`),
kept in memory. Validation: ``--val-recordings``; else, when a ``--recordings``
path is a dataset root (``DIR/train`` exists), ``DIR/train`` trains and
``DIR/val`` validates; else 15 % of the windows, taken in whole 30 s blocks of
time (overlapping windows never straddle the split), are held out.

Training: AdamW, a one-cycle learning-rate schedule, cross-entropy with class
weights (inverse frequency) and light label smoothing, augmentation in feature
space (per-sample affine jitter, erasing and finger-like bars over frames, time shift and
SpecAugment masks of the log-mel), modality dropout (presence-mask columns
cleared at random: one modality dropped, or only one kept; which one is dropped
can be weighted towards a dominant modality), auxiliary unimodal losses (see
below), early stopping on
validation (accuracy, then loss), the best epoch's weights kept. A temperature
is then fitted on the validation logits (LBFGS on the NLL) and saved with the
weights, so the artifact's probabilities are calibrated. Deterministic for a
``--seed`` on one device and thread count.

Modality competition: on avdigits video solves most windows, so in a fused
model trained only on the fused loss the audio and text encoders learn little
(the model with video removed at test time did 7 points worse than a model
trained on audio and text alone). With ``aux_weight`` > 0 each encoder also
gets a small linear classifier on its own embedding (:class:`AuxHeads`); its
cross-entropy, over the windows where that modality is present in the
*recording* (before modality dropout), is added to the fused loss with that
weight. Encoders then run on every present window (dropout only hides an
embedding from the fusion), which costs some CPU. The auxiliary heads are a
training device only: they live outside :class:`FusionModel` and are never
saved, so the artifact is the same format as without them.

Video (avdigits, docs/results.md): 48 px frames through the pool-first stack
(conv, max-pool, BatchNorm, ReLU; 16-32-64-128 channels). A window's T frames
show the same digit a fraction of a second apart, so a training step encodes
one of them, drawn at random (``train_frames``; evaluation and the worker use
all T): a quarter of the video encoder's work, which pays for the larger
frames. Early stopping keeps the best epoch by validation accuracy, then loss.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) it trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA): every rank featurises the
data, a DistributedSampler splits each epoch, the global batch stays
``--batch-size``; rank 0 validates, decides early stopping for all, fits the
temperature and writes the artifact.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from streamfuse import clock
from streamfuse.clock import NS_PER_S
from streamfuse.config import AlignConfig
from streamfuse.fusion.features import MODALITIES, Features, Preprocessing
from streamfuse.fusion.model import FusionModel, ModelConfig
from streamfuse.progress import Progress
from streamfuse.train import metrics
from streamfuse.train.dataset import DataError, WindowSet, select_features

log = logging.getLogger("streamfuse.train")

VAL_FRACTION = 0.15
VAL_BLOCK_NS = 30 * NS_PER_S
WARMUP_FRACTION = 0.25  # of the one-cycle schedule's steps with a rising learning rate


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters (all stored in the manifest's training summary)."""

    fusion: str = "attention"
    modalities: tuple[str, ...] = MODALITIES
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    patience: int = 6
    seed: int = 0
    augment: bool = True
    # Per window: drop one present modality (when two or more are present)...
    p_drop_one: float = 0.3
    p_keep_one: float = 0.2  # ...or keep only one
    # Relative odds of each of MODALITIES (video, audio, text) being the one "drop one" clears.
    # Video, the dominant modality, 4x: the fusion head then sees audio+text alone often enough
    # to do as well as a model trained without video (docs/results.md, modality dropout).
    drop_weights: tuple[float, float, float] = (4.0, 1.0, 1.0)
    # Weight of the auxiliary unimodal losses (0 = off); see the module docstring.
    aux_weight: float = 0.5
    # 48 px frames (the digit spans 22-41 px), a fourth video block, and the pool-first stack
    # trained on one frame per window: more accurate in less training time (docs/results.md).
    image_size: int = 48
    hop_length: int = 320  # 20 ms log-mel frames: half the audio encoder's work of 10 ms
    n_mels: int = 32
    # Top of the mel filterbank in Hz (0 = half the sample rate): 4000 for speech recorded at
    # 8 kHz, whose bands above 4 kHz hold only background sound.
    f_max: float = 0.0
    # conv + max-pool + BatchNorm: learns far faster than stride-2 + GroupNorm here
    encoder: str = "pool_first"
    video_channels: tuple[int, ...] = (16, 32, 64, 128)
    # Twice the channels of (16, 32, 64): better on speakers never heard in training, on both
    # seeds of the leave-one-speaker-out protocol (docs/results.md, unseen speakers).
    audio_channels: tuple[int, ...] = (32, 64, 128)
    embed_dim: int = 64
    dropout: float = 0.1
    # Share of training windows with a bar drawn over part of the digit (see augment): a finger
    # or a pen over what the camera shows; it halves the errors on covered digits
    # (docs/results.md). 0 = off.
    occlude: float = 0.5
    # Frames of each window the video encoder sees in a training step (0 = all T): a window's
    # frames show one digit, so a random subset per step is augmentation that costs less.
    train_frames: int = 1
    # Speaker-independent audio, in feature space (see augment; docs/results.md, unseen
    # speakers). All 0 = off, which draws nothing extra from the random stream.
    speed: float = 0.0  # time stretch of the log-mel by up to this fraction (speaking rate)
    vtlp: float = 0.0  # mel-axis warp by up to this fraction (vocal tract length)
    pitch: float = 0.0  # mel-axis shift by up to this many bands (pitch, formants)
    mix: float = 0.0  # share of windows mixed with another window's audio (power domain)...
    mix_snr: tuple[float, float] = (5.0, 20.0)  # ...at an SNR drawn from this range, dB
    masks: int = 1  # SpecAugment: band masks and time masks per window
    # The log-mel's normalisation (Preprocessing.audio_norm, saved in the artifact so the
    # worker computes the same features): "per_window" or "per_band".
    audio_norm: str = "per_window"

    def preprocessing(self, align: AlignConfig) -> Preprocessing:
        return Preprocessing.from_align(align, image_size=self.image_size,
                                        hop_length=self.hop_length, n_mels=self.n_mels,
                                        f_max=self.f_max, audio_norm=self.audio_norm)


@dataclass
class Dist:
    """Distributed context (world 1 = plain single-process training)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------- augmentation


def modality_dropout(mask: torch.Tensor, gen: torch.Generator, *, p_drop_one: float,
                     p_keep_one: float, columns: torch.Tensor,
                     drop_weights: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``mask`` ``(B, 3)`` with present modalities cleared at random.

    Per row, among the model's ``columns`` that are present: with
    ``p_drop_one`` one is cleared (if two or more are present), with
    ``p_keep_one`` all but one are cleared. A row never loses its last modality.
    ``drop_weights`` ``(len(columns),)`` positive: the odds of each column being
    the one cleared by "drop one" (uniform when None); "keep one" keeps a
    uniformly chosen one.
    """
    mask = mask.clone()
    b = mask.shape[0]
    sub = mask[:, columns]
    n_present = sub.sum(dim=1)
    u = torch.rand(b, generator=gen)
    # A random present modality per row: argmax of random scores among present ones.
    r = torch.rand(b, len(columns), generator=gen).to(mask.device)
    keep_pick = r.masked_fill(~sub, -1.0).argmax(dim=1)
    if drop_weights is None:
        drop_pick = keep_pick
    else:
        # Weighted choice (Efraimidis-Spirakis): argmax of r ** (1 / w) picks column j with
        # odds w_j.
        w = drop_weights.to(mask.device, r.dtype).clamp(min=1e-6)
        drop_pick = r.pow(1.0 / w).masked_fill(~sub, -1.0).argmax(dim=1)
    u = u.to(mask.device)
    multi = n_present >= 2
    drop = multi & (u < p_drop_one)
    keep = multi & (u >= p_drop_one) & (u < p_drop_one + p_keep_one)
    sub = torch.where(drop.unsqueeze(1), sub & ~F.one_hot(drop_pick, len(columns)).bool(), sub)
    sub = torch.where(keep.unsqueeze(1), sub & F.one_hot(keep_pick, len(columns)).bool(), sub)
    mask[:, columns] = sub
    return mask


def augment(f: Features, gen: torch.Generator, *, occlude: float = 0.0,
            audio: AudioAugment | None = None) -> Features:
    """Random feature-space augmentation of a training batch (see module docstring).

    ``occlude`` > 0: in that share of windows a bar (a finger, a pen) of random width and
    brightness reaches from outside the digit towards its centre (the centre of mass of
    the dark ink), the same on the window's T frames. 0 draws nothing extra.

    ``audio``: the log-mel's speaker-independence augmentations (:class:`AudioAugment`).
    """
    b = f.batch_size
    frames = _augment_frames(f.frames, b, gen, occlude=occlude)
    present = f.mask[:, MODALITIES.index("audio")].bool()
    logmel = _augment_logmel(f.logmel, b, gen, audio or AudioAugment(), present)
    return replace(f, frames=frames, logmel=logmel)


@dataclass(frozen=True)
class AudioAugment:
    """What :func:`augment` does to the log-mel beyond its time shift and masks (the
    :class:`TrainOptions` fields of the same names). All 0 draws nothing extra."""

    speed: float = 0.0
    vtlp: float = 0.0
    pitch: float = 0.0
    mix: float = 0.0
    mix_snr: tuple[float, float] = (5.0, 20.0)
    masks: int = 1

    @classmethod
    def from_options(cls, opts: TrainOptions) -> AudioAugment:
        return cls(speed=opts.speed, vtlp=opts.vtlp, pitch=opts.pitch, mix=opts.mix,
                   mix_snr=opts.mix_snr, masks=opts.masks)


def warp_logmel(logmel: torch.Tensor, gen: torch.Generator, *, speed: float = 0.0,
                vtlp: float = 0.0, pitch: float = 0.0) -> torch.Tensor:
    """``logmel`` ``(B, 1, n_mels, F)`` resampled per window: time stretched by a factor in
    ``[1 - speed, 1 + speed]`` about its middle (speaking rate; F stays F, the edges repeat),
    and the mel axis warped by a factor in ``[1 - vtlp, 1 + vtlp]`` (vocal tract length
    perturbation) and shifted by up to ``pitch`` bands (pitch and formants move up or down
    the mel scale together). Draws only for the non-zero ones."""
    b = logmel.shape[0]
    if b == 0 or not (speed > 0 or vtlp > 0 or pitch > 0):
        return logmel
    ones, zeros = torch.ones(b), torch.zeros(b)
    rate = 1 + speed * (2 * torch.rand(b, generator=gen) - 1) if speed > 0 else ones
    warp = 1 + vtlp * (2 * torch.rand(b, generator=gen) - 1) if vtlp > 0 else ones
    shift = pitch * (2 * torch.rand(b, generator=gen) - 1) if pitch > 0 else zeros
    n_mels = logmel.shape[2]
    # Output (band m, time t) reads input at (m / warp - shift, about the middle t * rate):
    # in grid_sample's [-1, 1] coordinates (align_corners=True) for the bands; from band 0
    # upwards, since low bands move least when a vocal tract grows.
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = rate
    theta[:, 1, 1] = 1 / warp
    theta[:, 1, 2] = (1 / warp - 1) - 2 * shift / max(1, n_mels - 1)
    grid = F.affine_grid(theta.to(logmel.device, logmel.dtype), list(logmel.shape),
                         align_corners=True)
    return F.grid_sample(logmel, grid, padding_mode="border", align_corners=True)


def mix_logmel(logmel: torch.Tensor, present: torch.Tensor, gen: torch.Generator, *,
               share: float, snr_db: tuple[float, float]) -> torch.Tensor:
    """In ``share`` of the windows with audio ``present`` ``(B,)``, another such window's
    sound (its real background sounds and speech) is added in the power domain at an SNR
    drawn from ``snr_db``, then the log-mel is standardised again per window (as
    ``audio_norm = "per_window"`` makes every input; ``mix_logmel`` is meant for it). The
    label stays the first window's: the other is interference, 5 dB or more below it by
    default. Draws nothing for ``share`` 0."""
    b = logmel.shape[0]
    if b < 2 or share <= 0:
        return logmel
    pick = (torch.rand(b, generator=gen) < share) & present.cpu()
    other = torch.randperm(b, generator=gen)
    snr = snr_db[0] + (snr_db[1] - snr_db[0]) * torch.rand(b, generator=gen)
    pick &= present.cpu()[other] & (other != torch.arange(b))
    if not bool(pick.any()):
        return logmel
    dev = logmel.device
    x = logmel.float()
    power = x.exp()
    p1 = power.mean(dim=(1, 2, 3))
    p2 = p1[other.to(dev)]
    gain = (p1 / (p2.clamp(min=1e-12) * 10 ** (snr.to(dev) / 10))).view(b, 1, 1, 1)
    mixed = torch.log(power + gain * power[other.to(dev)])
    mean = mixed.mean(dim=(1, 2, 3), keepdim=True)
    std = mixed.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    mixed = (mixed - mean) / (std + 1e-5)
    return torch.where(pick.to(dev).view(b, 1, 1, 1), mixed.to(logmel.dtype), logmel)


def _augment_frames(frames: torch.Tensor, b: int, gen: torch.Generator, *,
                    occlude: float) -> torch.Tensor:
    """``augment`` of the frames ``(batch, T, C, H, W)``: a random similarity transform
    the same on all T frames, bars, an erased box, noise."""
    dev = frames.device
    if not frames.numel():
        return frames
    t, _c, h, w = frames.shape[1:]
    angle = (torch.rand(b, generator=gen) - 0.5) * (2 * math.radians(12))
    scale = 0.85 + 0.3 * torch.rand(b, generator=gen)
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    # The same motion for all T frames.
    theta = theta.to(dev, frames.dtype).repeat_interleave(t, dim=0)
    flat = frames.flatten(0, 1)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    flat = F.grid_sample(flat, grid, padding_mode="border", align_corners=False)
    frames = flat.view_as(frames)
    if occlude > 0:
        frames = occlude_bars(frames, gen, occlude)
    # Erase a random box in 25 % of windows (fingers, glare).
    erase = torch.rand(b, generator=gen) < 0.25
    if bool(erase.any()):
        y0 = (torch.rand(b, generator=gen) * h * 0.7).long()
        x0 = (torch.rand(b, generator=gen) * w * 0.7).long()
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        box = (ys >= y0.view(b, 1, 1)) & (ys < (y0 + h // 3).view(b, 1, 1)) & \
              (xs >= x0.view(b, 1, 1)) & (xs < (x0 + w // 3).view(b, 1, 1)) & \
              erase.view(b, 1, 1)
        frames = frames.masked_fill(box.to(dev).view(b, 1, 1, h, w), 0.0)
    frames = frames + 0.1 * torch.randn(frames.shape, generator=gen).to(dev, frames.dtype)
    return frames


def _augment_logmel(logmel: torch.Tensor, b: int, gen: torch.Generator, audio: AudioAugment,
                    present: torch.Tensor) -> torch.Tensor:
    """``augment`` of the log-mel ``(batch, 1, n_mels, time)``: a circular time shift,
    ``audio``'s warps and mixing, and SpecAugment-style masking of a band and a stretch of
    time (``audio.masks`` of each)."""
    dev = logmel.device
    if not logmel.numel():
        return logmel
    n_t = logmel.shape[3]
    shift_t = torch.randint(-n_t // 4, n_t // 4 + 1, (b,), generator=gen)
    idx = (torch.arange(n_t).view(1, n_t) - shift_t.view(b, 1)) % n_t
    logmel = torch.gather(logmel, 3, idx.to(dev).view(b, 1, 1, n_t).expand_as(logmel))
    logmel = warp_logmel(logmel, gen, speed=audio.speed, vtlp=audio.vtlp, pitch=audio.pitch)
    logmel = mix_logmel(logmel, present, gen, share=audio.mix, snr_db=audio.mix_snr)
    for _ in range(max(0, audio.masks)):
        logmel = _mask_logmel(logmel, b, gen)
    return logmel


def _mask_logmel(logmel: torch.Tensor, b: int, gen: torch.Generator) -> torch.Tensor:
    """One band and one stretch of time set to 0 (the mean) per window: SpecAugment."""
    dev = logmel.device
    n_mels, n_t = logmel.shape[2], logmel.shape[3]
    f0 = torch.randint(0, n_mels, (b,), generator=gen)
    fw = torch.randint(0, max(1, n_mels // 8), (b,), generator=gen)
    t0 = torch.randint(0, n_t, (b,), generator=gen)
    tw = torch.randint(0, max(1, n_t // 8), (b,), generator=gen)
    mels = torch.arange(n_mels).view(1, n_mels, 1)
    times = torch.arange(n_t).view(1, 1, n_t)
    cut = ((mels >= f0.view(b, 1, 1)) & (mels < (f0 + fw).view(b, 1, 1))) | \
          ((times >= t0.view(b, 1, 1)) & (times < (t0 + tw).view(b, 1, 1)))
    logmel = logmel.masked_fill(cut.to(dev).unsqueeze(1), 0.0)
    return logmel


def occlude_bars(frames: torch.Tensor, gen: torch.Generator, share: float) -> torch.Tensor:
    """``frames`` ``(B, T, 1, H, W)`` (normalised, dark ink) with a bar over part of the digit
    in ``share`` of the windows (see :func:`augment`)."""
    b, _t, _c, h, w = frames.shape
    u = torch.rand(b, generator=gen)
    direction = torch.rand(b, generator=gen) * (2 * math.pi)
    # How far short of the centre the bar stops (of the size).
    reach = 0.15 * torch.rand(b, generator=gen)
    width = 0.07 + 0.18 * torch.rand(b, generator=gen)  # bar width (of the size)
    level = -1.5 + 4.0 * torch.rand(b, generator=gen)  # darker than paper to brighter (normalised)
    dev = frames.device
    # (B, H, W): ink, darker than any paper; first frame.
    ink = (-frames[:, 0, 0] - 1.0).clamp(min=0).cpu()
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    total = ink.sum(dim=(1, 2)).clamp(min=1e-6)
    cy = (ink * ys).sum(dim=(1, 2)) / total
    cx = (ink * xs).sum(dim=(1, 2)) / total
    size = float(max(h, w))
    # From a point far outside the digit to a point ``reach`` short of its centre, along
    # ``direction``.
    dx, dy = torch.cos(direction), torch.sin(direction)
    x1, y1 = cx + dx * reach * size, cy + dy * reach * size
    x0, y0 = cx + dx * size, cy + dy * size
    # Distance of each pixel to the segment (x0, y0)-(x1, y1).
    vx, vy = (x1 - x0).view(b, 1, 1), (y1 - y0).view(b, 1, 1)
    px, py = xs - x0.view(b, 1, 1), ys - y0.view(b, 1, 1)
    along = ((px * vx + py * vy) / (vx * vx + vy * vy).clamp(min=1e-6)).clamp(0, 1)
    dist = torch.hypot(px - along * vx, py - along * vy)
    bar = (dist <= (width * size / 2).view(b, 1, 1)) & (u < share).view(b, 1, 1)
    return torch.where(bar.to(dev).view(b, 1, 1, h, w),
                       level.to(dev, frames.dtype).view(b, 1, 1, 1, 1), frames)


def subsample_frames(f: Features, k: int, gen: torch.Generator) -> Features:
    """``f`` with ``k`` of its T frames, drawn at random (the same ones for the whole batch,
    kept in time order): frames ``(B, T, 1, H, W)`` -> ``(B, k, 1, H, W)``."""
    t = f.frames.shape[1]
    idx = torch.randperm(t, generator=gen)[:k].sort().values
    return replace(f, frames=f.frames.index_select(1, idx.to(f.frames.device)))


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``(C,)``: each present class weighs as much in total (clipped to
    [0.2, 5] per window); classes with no windows get 0."""
    counts = torch.bincount(y, minlength=n_classes).double()
    present = int((counts > 0).sum())
    w = (counts.sum() / (max(1, present) * counts.clamp(min=1))).clamp(0.2, 5.0)
    return torch.where(counts > 0, w, torch.zeros_like(w)).float()


# ----------------------------------------------------------------------------- auxiliary heads


class AuxHeads(torch.nn.Module):
    """Training-only unimodal classifiers: one linear layer ``(D,) -> (C,)`` per modality
    of ``model``, on that modality's embedding. Never part of the artifact."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        d, c = model.cfg.embed_dim, len(model.cfg.classes)
        self.heads = torch.nn.ModuleDict({m: torch.nn.Linear(d, c) for m in model.modalities})

    def forward(self, embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: head(embeddings[m]) for m, head in self.heads.items()}


class TrainNet(torch.nn.Module):
    """The fusion model and its auxiliary heads as one module (one DDP wrapper for both).

    ``forward(batch, fuse_mask)``: encoders run on ``batch.mask`` (what the recording
    holds), the fusion sees only ``fuse_mask`` ``(B, M)`` (after modality dropout);
    returns fused logits ``(B, C)`` and ``{modality: (B, C)}`` auxiliary logits.
    """

    def __init__(self, model: FusionModel, aux: AuxHeads) -> None:
        super().__init__()
        self.model = model
        self.aux = aux

    def forward(self, batch: Features,
                fuse_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.model.encode(batch)
        return self.model.fuse(emb, fuse_mask), self.aux(emb)


def aux_loss(aux_logits: dict[str, torch.Tensor], present: torch.Tensor, y: torch.Tensor,
             modalities: tuple[str, ...], *, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over modalities of the cross-entropy of its auxiliary logits ``(B, C)`` against
    ``y`` ``(B,)``, over the rows where ``present`` ``(B, M)`` (column per modality) is True
    only; a modality present in no row adds 0."""
    total = torch.zeros((), device=y.device)
    for j, m in enumerate(modalities):
        rows = present[:, j].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        total = total + F.cross_entropy(aux_logits[m].float().index_select(0, rows),
                                        y.index_select(0, rows),
                                        weight=weight, label_smoothing=label_smoothing)
    return total


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def predict_logits(model: FusionModel, f: Features, *, batch: int = 512,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Uncalibrated logits ``(N, C)`` in eval mode, in batches; ``mask`` overrides presence."""
    was = model.training
    model.eval()
    out = []
    n = f.batch_size
    for i in range(0, n, batch):
        rows = torch.arange(i, min(n, i + batch))
        part = select_features(f, rows)
        if mask is not None:
            part = part.with_mask(mask[rows.to(mask.device)])
        out.append(model(part).float())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, len(model.cfg.classes))


def holdout_split(keys: list[tuple[str, int]], fraction: float,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/validation row indices, holding out whole ``VAL_BLOCK_NS`` blocks of each source."""
    blocks = sorted({(s, t // VAL_BLOCK_NS) for s, t in keys})
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=gen).tolist()
    n_val = max(1, round(fraction * len(blocks))) if len(blocks) > 1 else 0
    val_blocks = {blocks[i] for i in order[:n_val]}
    is_val = torch.tensor([(s, t // VAL_BLOCK_NS) in val_blocks for s, t in keys])
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)


class EarlyStopping:
    """Keeps the best epoch's weights and says when to stop.

    Best: the highest validation accuracy, ties to the lower loss. Stop after ``patience``
    epochs without a better one, but never before the learning rate's warm-up has ended plus
    ``patience``: while it is still rising a small data set can sit at chance for several
    epochs before it learns.
    """

    def __init__(self, model: FusionModel, *, patience: int, warmup_epochs: int) -> None:
        self.patience = patience
        self.warmup_epochs = warmup_epochs
        self.best: tuple[float, float] = (-1.0, float("inf"))  # (accuracy, loss)
        self.best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, epoch: int, val_acc: float, val_loss: float, model: FusionModel) -> bool:
        """Record epoch ``epoch`` (1-based); True when it is the best so far."""
        improved = (val_acc, -val_loss) > (self.best[0], -self.best[1])
        if improved:
            self.best, self.best_epoch, self.bad_epochs = (val_acc, val_loss), epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return improved

    def should_stop(self, epoch: int) -> bool:
        return self.bad_epochs >= self.patience and epoch >= self.warmup_epochs + self.patience


@dataclass
class _Trainer:
    """One training run's model, optimiser and random streams, built by :func:`_trainer`."""

    model: FusionModel
    net: torch.nn.Module  # the model, or model + aux heads, maybe wrapped in DDP
    use_aux: bool
    opt: torch.optim.Optimizer
    sched: Any
    weights: torch.Tensor  # per-class loss weights
    gen: torch.Generator  # augmentation and modality dropout
    drop_weights: torch.Tensor
    sampler: Any  # DistributedSampler over the training rows
    batch: int  # rows per step on this rank
    steps: int  # steps per epoch


def _trainer(train_set: WindowSet, prep: Preprocessing, opts: TrainOptions, dist: Dist) -> _Trainer:
    """The model (initialised from ``opts.seed``), its optimiser, schedule and sampler."""
    from torch.utils.data import DistributedSampler

    dev = dist.device
    torch.manual_seed(opts.seed)
    cfg = ModelConfig.for_preprocessing(
        train_set.classes, prep, fusion=opts.fusion, modalities=opts.modalities,
        embed_dim=opts.embed_dim, dropout=opts.dropout, video_channels=opts.video_channels,
        audio_channels=opts.audio_channels, encoder=opts.encoder)
    model = FusionModel(cfg).to(dev)
    use_aux = opts.aux_weight > 0
    # Built even when unused, so that aux_weight alone does not shift the later random draws.
    aux = AuxHeads(model).to(dev)
    net: torch.nn.Module = TrainNet(model, aux) if use_aux else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Encoders are skipped for absent modalities, so some parameters may go unused in a step.
        net = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                  find_unused_parameters=True)
    batch = max(1, opts.batch_size // dist.world)
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(train_set)), num_replicas=dist.world, rank=dist.rank,  # type: ignore[arg-type]
        shuffle=True, seed=opts.seed, drop_last=False)
    steps = max(1, math.ceil(len(sampler) / batch))
    opt = torch.optim.AdamW(list(net.parameters()), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = one_cycle(opt, opts.lr, opts.epochs * steps)
    columns = model.mask_columns.cpu()
    return _Trainer(model=model, net=net, use_aux=use_aux, opt=opt, sched=sched,
                    weights=class_weights(train_set.y, len(train_set.classes)).to(dev),
                    gen=torch.Generator().manual_seed(opts.seed * 1000 + dist.rank),
                    drop_weights=torch.tensor(opts.drop_weights, dtype=torch.float32)[columns],
                    sampler=sampler, batch=batch, steps=steps)


def one_cycle(opt: torch.optim.Optimizer, lr: float,
              total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule over ``total_steps``, warming up for ``WARMUP_FRACTION`` of them.
    torch divides by ``pct_start * total_steps - 1``: where that is 0 (4 steps in all, say two
    epochs of two batches) the warm-up takes two steps instead."""
    pct = WARMUP_FRACTION
    if abs(pct * total_steps - 1) < 1e-9:
        pct = 2 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                               pct_start=pct)


def _step(tr: _Trainer, feats: Features, y: torch.Tensor, rows: torch.Tensor,
          opts: TrainOptions) -> tuple[float, float]:
    """One optimisation step on ``rows``: (fused loss, auxiliary loss)."""
    model, dev = tr.model, y.device
    batch = select_features(feats, rows)
    if 0 < opts.train_frames < batch.frames.shape[1]:
        batch = subsample_frames(batch, opts.train_frames, tr.gen)
    if opts.augment:
        batch = augment(batch, tr.gen, occlude=opts.occlude,
                        audio=AudioAugment.from_options(opts))
    dropped = modality_dropout(batch.mask.cpu(), tr.gen, p_drop_one=opts.p_drop_one,
                               p_keep_one=opts.p_keep_one, columns=model.mask_columns.cpu(),
                               drop_weights=tr.drop_weights)
    yb = y[rows.to(dev)]
    if tr.use_aux:
        # Encoders see every present window; dropout only hides embeddings from the fusion.
        present = model.model_mask(batch)
        fuse_mask = dropped.to(dev).index_select(1, model.mask_columns).bool()
        logits, aux_logits = tr.net(batch, fuse_mask)
        extra = aux_loss(aux_logits, present, yb, model.modalities, weight=tr.weights,
                         label_smoothing=opts.label_smoothing)
    else:
        logits = tr.net(batch.with_mask(dropped))
        extra = torch.zeros((), device=dev)
    fused = F.cross_entropy(logits.float(), yb, weight=tr.weights,
                            label_smoothing=opts.label_smoothing)
    loss = fused + opts.aux_weight * extra
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(tr.net.parameters()), 5.0)
    tr.opt.step()
    tr.sched.step()
    return float(fused.detach()), float(extra.detach())


def _epoch(tr: _Trainer, feats: Features, y: torch.Tensor, epoch: int, opts: TrainOptions,
           bar: Progress) -> tuple[float, float]:
    """One pass over this rank's share of the training rows: mean (fused, auxiliary) loss."""
    tr.sampler.set_epoch(epoch)
    order = torch.tensor(list(iter(tr.sampler)), dtype=torch.int64)
    tr.net.train()
    total, total_aux, count = 0.0, 0.0, 0
    for step in range(tr.steps):
        rows = order[step * tr.batch:(step + 1) * tr.batch]
        if rows.numel() == 0:
            rows = order[:1]
        fused, extra = _step(tr, feats, y, rows, opts)
        total += fused * rows.numel()
        total_aux += extra * rows.numel()
        count += rows.numel()
        bar.set_note(f"epoch {epoch + 1}/{opts.epochs} loss {total / count:.4f}")
        bar.update()
    return total / max(1, count), total_aux / max(1, count)


def calibrate(model: FusionModel, val_feats: Features, val_y: torch.Tensor,
              classes: list[str]) -> dict[str, Any]:
    """Fit the model's temperature on the validation windows; their calibrated metrics."""
    logits = predict_logits(model, val_feats)
    probs_raw = torch.softmax(logits, 1)
    t = metrics.fit_temperature(logits, val_y)
    model.set_temperature(t)
    probs = torch.softmax(logits / t, 1)
    s = metrics.summary(probs.cpu(), val_y.cpu(), classes)
    return {"temperature": t, "val_accuracy": s["accuracy"], "val_macro_f1": s["macro_f1"],
            "val_ece": s["ece"], "val_ece_uncalibrated": metrics.ece(probs_raw.cpu(), val_y.cpu()),
            "val_nll": metrics.nll(logits / t, val_y), "val_windows": len(val_y),
            # what the console's Teach page draws (confusion matrix, reliability diagram)
            "val_confusion": s["confusion"],
            "val_reliability": metrics.reliability(probs.cpu(), val_y.cpu())}


def _stop_everywhere(stop: bool, dist: Dist) -> bool:
    """Rank 0's decision, for every rank."""
    flag = torch.tensor([float(stop), 0.0])
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.broadcast(flag, src=0)
    return bool(flag[0])


def train(train_set: WindowSet, val_set: WindowSet, prep: Preprocessing, opts: TrainOptions, *,
          dist: Dist | None = None, quiet: bool = False) -> tuple[FusionModel, dict[str, Any]]:
    """Train a :class:`FusionModel`; returns it (best epoch, temperature set) and its metrics.

    Epochs (:func:`_epoch`), validation with early stopping (:class:`EarlyStopping`), then
    temperature calibration (:func:`calibrate`). Under DDP every rank calls this; only rank
    0 validates, and only its returned metrics are complete.
    """
    dist = dist or Dist()
    dev = dist.device
    tr = _trainer(train_set, prep, opts, dist)
    feats, y = train_set.features.to(dev), train_set.y.to(dev)
    val_feats, val_y = val_set.features.to(dev), val_set.y.to(dev)
    stopper = EarlyStopping(tr.model, patience=opts.patience,
                            warmup_epochs=math.ceil(WARMUP_FRACTION * opts.epochs))
    history: list[dict[str, Any]] = []
    t_start = clock.monotonic_ns()
    bar = Progress("training", opts.epochs * tr.steps, unit="step", enabled=not quiet and dist.main)
    for epoch in range(opts.epochs):
        loss, extra = _epoch(tr, feats, y, epoch, opts, bar)
        stop = False
        if dist.main:
            val_logits = predict_logits(tr.model, val_feats)
            val_acc = metrics.accuracy(val_logits.argmax(1), val_y)
            val_loss = metrics.nll(val_logits, val_y)
            elapsed = (clock.monotonic_ns() - t_start) / NS_PER_S
            history.append({"epoch": epoch + 1, "loss": loss, "aux_loss": extra,
                            "val_accuracy": val_acc, "val_loss": val_loss,
                            "lr": tr.sched.get_last_lr()[0], "elapsed_s": elapsed})
            improved = stopper.update(epoch + 1, val_acc, val_loss, tr.model)
            bar.write(f"epoch {epoch + 1}/{opts.epochs} loss {loss:.4f} val_acc {val_acc:.4f} "
                      f"val_loss {val_loss:.4f} {elapsed:.0f}s{' *' if improved else ''}")
            stop = stopper.should_stop(epoch + 1)
        if _stop_everywhere(stop, dist):
            break
    bar.close()
    tr.model.load_state_dict(stopper.best_state)
    train_s = (clock.monotonic_ns() - t_start) / NS_PER_S
    result: dict[str, Any] = {"epochs_run": len(history) or opts.epochs,
                              "best_epoch": stopper.best_epoch,
                              "train_seconds": round(train_s, 2),
                              "history": history}
    if dist.main:
        result.update(calibrate(tr.model, val_feats, val_y, train_set.classes))
    return tr.model, result


# ----------------------------------------------------------------------------- the whole job


def _pick_device(name: str, local_rank: int = 0) -> torch.device:
    from streamfuse.config import device_problem

    problem = device_problem(name)
    if problem:
        from streamfuse.usage import UsageError

        raise UsageError(f"--device: {problem}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from streamfuse.usage import UsageError

        raise UsageError(f"--device {name}: CUDA is not available here")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def _init_dist(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device_name, local_rank)
    if world <= 1:
        return Dist(0, 1, dev)
    import torch.distributed as tdist

    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if dev.type == "cpu":
        # Ranks on one host share its cores; oversubscription slows everyone down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(tdist.get_rank(), world, dev)


@dataclass(frozen=True)
class TrainData:
    """Where the windows come from: recordings (files, or directories of ``*.mcap``) and their
    labels CSV (None: ``labels.csv`` beside them, else their label messages); without
    ``val_recordings``, :data:`VAL_FRACTION` of the windows in whole blocks of time."""

    recordings: list[str]
    labels: str | None = None
    val_recordings: list[str] | None = None
    val_labels: str | None = None


def train_artifact(align: AlignConfig, opts: TrainOptions, data: TrainData, out: str, *,
                   device: str = "auto", quiet: bool = False) -> None:
    """Load the windows, :func:`train`, and write the artifact to ``out`` with its training
    summary and metrics (one line on stdout). Under torchrun (``WORLD_SIZE`` > 1) every
    rank calls this; rank 0 writes."""
    from streamfuse.fusion.artifact import save_artifact
    from streamfuse.train.dataset import load_windows

    dist = _init_dist(device)
    try:
        prep = opts.preprocessing(align)
        t0 = clock.monotonic_ns()
        shown = not quiet and dist.main
        train_set = load_windows(data.recordings, align, prep, labels=data.labels,
                                 progress=shown)
        if data.val_recordings:
            val_set = load_windows(data.val_recordings, align, prep, labels=data.val_labels,
                                   classes=train_set.classes, progress=shown)
        else:
            tr, va = holdout_split(train_set.keys, VAL_FRACTION, opts.seed)
            val_set = _subset(train_set, va)
            train_set = _subset(train_set, tr)
        data_s = (clock.monotonic_ns() - t0) / NS_PER_S
        if dist.main:
            per_class = train_set.summary["per_class"].items()
            log.info("data: %d training and %d validation windows (%s) in %.1fs",
                     len(train_set), len(val_set),
                     ", ".join(f"{k} {v}" for k, v in per_class), data_s)
        if len(val_set) == 0:
            raise DataError("no validation windows: pass --val-recordings or more data")
        model, result = train(train_set, val_set, prep, opts, dist=dist, quiet=quiet)
        if dist.main:
            training = {"options": asdict(opts),
                        "train": train_set.summary, "val": val_set.summary,
                        "data_seconds": round(data_s, 2),
                        "world_size": dist.world, "device": str(dist.device),
                        **{k: v for k, v in result.items()
                           if not k.startswith("val_") and k != "temperature"}}
            mets = {k: v for k, v in result.items() if k.startswith("val_") or k == "temperature"}
            model_id = save_artifact(out, model, prep, align=align,
                                     extra={"training": training, "metrics": mets})
            print(f"{out}: model {model_id}: val accuracy {result['val_accuracy']:.4f}, "
                  f"ECE {result['val_ece']:.4f} (T={result['temperature']:.2f}), best epoch "
                  f"{result['best_epoch']}/{result['epochs_run']}, "
                  f"{result['train_seconds']:.0f}s training + {data_s:.0f}s data")
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.barrier()
            tdist.destroy_process_group()


def _subset(ws: WindowSet, rows: torch.Tensor) -> WindowSet:
    summary = dict(ws.summary, labelled=int(rows.numel()), holdout="30 s blocks")
    return WindowSet(select_features(ws.features, rows), ws.y[rows],
                     [ws.keys[i] for i in rows.tolist()], ws.classes, summary)
