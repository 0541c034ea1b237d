"""The fusion model: one encoder per modality, a fusion strategy, a classifier head.

Public API:

- :class:`ModelConfig` — frozen; stored in the manifest (``to_dict``/``from_dict``).
  ``classes`` (label names, output order), ``modalities`` (subset of
  ``("video", "audio", "text")`` the model has encoders for), ``fusion`` in
  :data:`FUSIONS`, ``embed_dim``, channel widths, ``dropout``, and the input
  sizes that must match :class:`~streamfuse.fusion.features.Preprocessing`
  (``n_mels``, ``text_buckets``); build with :meth:`ModelConfig.for_preprocessing`.
- :class:`FusionModel` ``(cfg)``:
    * ``forward(features) -> logits (B, n_classes)`` (uncalibrated);
    * ``encode(features) -> {modality: (B, D)}`` embeddings (rows of absent
      modalities are zeros and are never used);
    * ``fuse(embeddings, mask) -> logits`` — so a trainer may encode once and fuse
      under several masks;
    * ``calibrated_logits(features)`` = ``forward / temperature`` and
      ``predict_proba(features)`` = its softmax; ``temperature`` is a buffer saved
      with the weights, set by :meth:`FusionModel.set_temperature` after fitting
      on validation data;
    * ``fusion_weights(embeddings, mask) -> (B, M)`` how much each modality counted
      (mean / weighted / attention; concat reports the mask normalised).
  Modality dropout and ablation: pass ``features.with_mask(mask)`` with columns set
  False. A modality the model has no encoder for is ignored whatever its mask.

Absent modalities contribute nothing:
- ``mean``, ``weighted``, ``attention``: the average / softmax runs over the
  present modalities only (weights of absent ones are exactly 0). A window with
  nothing present gets a zero fused vector, so the head's bias decides.
- ``concat``: an absent modality's slot holds a *learned* "absent" embedding (not
  an encoder output of zeros), and the head also sees the presence flags.
Encoders run only on the rows where their modality is present (padding costs
no compute, and padding never reaches normalisation statistics).

Two CNN stacks (``ModelConfig.encoder``), for frames and log-mel alike:
- ``stride``: 3x3 stride-2 conv + GroupNorm per width. Cheapest (about a tenth
  of ``pool``'s CPU time on frames); GroupNorm normalises each sample on its own,
  which kept tiny synthetic problems stable, but on avdigits video it learns far
  worse (the trainer saw ~63% validation accuracy where ``pool`` passed it in 2 epochs).
- ``pool``: 3x3 conv + BatchNorm + 2x2 max-pool per width (``streamfuse train``'s
  default until the pool-first stack), run in channels-last layout (~1.5x faster on CPU).
- ``pool_first``: 3x3 conv + 2x2 max-pool + BatchNorm + ReLU per width, channels-last:
  the same receptive fields, but normalisation and ReLU (and their backward passes)
  run on a quarter of the pixels, ~1.4-1.7x less CPU per training step than ``pool``.
``video_stem`` > 0 (``pool*`` only) puts a 3x3 stride-2 conv + BatchNorm + ReLU with
that many channels before the video stack (0, the default, builds the model saved
before the field existed).
Either way, in eval mode a window's scores do not depend on the rest of its batch
(BatchNorm then uses its running statistics).

Shapes: B windows, T frames, H = W image size, M modalities in the model, D = embed_dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamfuse.fusion.features import MODALITIES, Features, Preprocessing

ARCHITECTURE = "streamfuse-fusion"
ARCHITECTURE_VERSION = 1
FUSIONS = ("concat", "mean", "weighted", "attention")
ENCODERS = ("stride", "pool", "pool_first")


class ModelConfigError(ValueError):
    """A model configuration that cannot be built (names the field)."""


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`FusionModel` (stored in the manifest)."""

    classes: tuple[str, ...]
    modalities: tuple[str, ...] = MODALITIES
    fusion: str = "attention"
    embed_dim: int = 64
    video_channels: tuple[int, ...] = (16, 32, 64)
    audio_channels: tuple[int, ...] = (16, 32, 64)
    n_mels: int = 40
    text_buckets: int = 1 << 14
    dropout: float = 0.1
    # "stride": stride-2 conv + GroupNorm (cheapest); "pool": conv + BatchNorm + 2x2 max-pool
    # (about 2x the multiply-adds, but learns avdigits far faster); "pool_first": conv + 2x2
    # max-pool + BatchNorm (normalisation and ReLU on a quarter of the pixels).
    encoder: str = "stride"
    # Channels of a 3x3 stride-2 conv + BatchNorm + ReLU stem before the video stack (0 = none,
    # the only choice before it existed): halves larger frames cheaply. "pool*" encoders only.
    video_stem: int = 0

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ModelConfigError(f"model.classes: need at least 2 distinct classes, "
                                   f"got {list(self.classes)}")
        if not self.modalities or any(m not in MODALITIES for m in self.modalities) \
                or len(set(self.modalities)) != len(self.modalities):
            raise ModelConfigError(f"model.modalities: expected a non-empty subset of "
                                   f"{MODALITIES}, got {list(self.modalities)}")
        if self.fusion not in FUSIONS:
            raise ModelConfigError(f"model.fusion: unknown fusion {self.fusion!r} "
                                   f"(expected one of {', '.join(FUSIONS)})")
        for name in ("embed_dim", "n_mels", "text_buckets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ModelConfigError(f"model.{name}: expected a positive integer, got {v!r}")
        for name in ("video_channels", "audio_channels"):
            v = getattr(self, name)
            if not v or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in v):
                raise ModelConfigError(f"model.{name}: expected positive integers, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(
                f"model.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        if self.encoder not in ENCODERS:
            raise ModelConfigError(f"model.encoder: expected one of {', '.join(ENCODERS)}, "
                                   f"got {self.encoder!r}")
        if isinstance(self.video_stem, bool) or not isinstance(self.video_stem, int) \
                or self.video_stem < 0:
            raise ModelConfigError(
                f"model.video_stem: expected an integer >= 0, got {self.video_stem!r}")
        if self.video_stem and self.encoder == "stride":
            raise ModelConfigError("model.video_stem: needs encoder 'pool' or 'pool_first'")

    @classmethod
    def for_preprocessing(cls, classes: Any, prep: Preprocessing, **kw: Any) -> ModelConfig:
        """A config whose input sizes match ``prep``."""
        if "modalities" in kw:
            # canonical order, so the manifest and mask columns agree
            kw["modalities"] = tuple(m for m in MODALITIES if m in kw["modalities"])
        return cls(classes=tuple(classes), n_mels=prep.n_mels, text_buckets=prep.text_buckets, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"model.{unknown[0]}: unknown key")
        if "classes" not in d:
            raise ModelConfigError("model.classes: missing")
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        if isinstance(kw.get("dropout"), int) and not isinstance(kw["dropout"], bool):
            kw["dropout"] = float(kw["dropout"])
        try:
            return cls(**kw)
        except TypeError as e:  # e.g. a string where a tuple of ints belongs
            raise ModelConfigError(f"model: {e}") from None


# ----------------------------------------------------------------------------- encoders


def _conv_stack(channels: tuple[int, ...], kind: str = "stride", stem: int = 0) -> nn.Sequential:
    """Per width: 3x3 conv with stride 2 + GroupNorm + ReLU; input has 1 channel.

    Stride 2 instead of conv + max-pool: 4x fewer multiply-adds per layer and no
    pooling pass (on CPU, max-pool took a third of the model's time).
    ``stem`` > 0: first a 3x3 stride-2 conv to that many channels + BatchNorm + ReLU.
    """
    layers: list[nn.Module] = []
    c_in = 1
    if stem:
        layers += [nn.Conv2d(1, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem),
                   nn.ReLU(inplace=True)]
        c_in = stem
    for c in channels:
        if kind == "pool":  # ModelConfig.encoder == "pool": conv + BatchNorm + ReLU + 2x2 max-pool
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        elif kind == "pool_first":
            # Max-pool straight after the conv: BatchNorm, ReLU and their backward passes then
            # touch a quarter of the pixels (on CPU ~1.4x less time per training step at 28 px,
            # ~1.7x at 40 px); the same receptive fields as "pool".
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                       nn.MaxPool2d(2, ceil_mode=True), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        else:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(min(4, c), c), nn.ReLU(inplace=True)]
        c_in = c
    return nn.Sequential(*layers)


def _use_channels_last(cnn: nn.Module, kind: str) -> bool:
    """The "pool" stack runs in channels-last memory layout: on CPU its full-resolution
    convolutions and max-pools took ~1.5x less time at batch 32 (~1.3x at batch 1);
    the stride-2 stack gained nothing, so it keeps the default layout. Values and the
    saved weights (made contiguous by ``save_artifact``) are the same either way."""
    if kind not in ("pool", "pool_first"):
        return False
    cnn.to(memory_format=torch.channels_last)
    return True


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 2C)``: spatial mean and max (max keeps a small, bright digit)."""
    return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class VideoEncoder(nn.Module):
    """Frames ``(N, T, 1, H, W)`` -> ``(N, D)``: a CNN shared across frames, then
    temporal mean and max pooling."""

    def __init__(self, channels: tuple[int, ...], dim: int, kind: str = "stride",
                 stem: int = 0) -> None:
        super().__init__()
        self.cnn = _conv_stack(channels, kind, stem)
        self.channels_last = _use_channels_last(self.cnn, kind)
        self.proj = nn.Linear(2 * channels[-1], dim)
        self.temporal = nn.Linear(2 * dim, dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, t = frames.shape[:2]
        x = frames.flatten(0, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        per_frame = F.relu(self.proj(_global_pool(self.cnn(x))))  # (N*T, D)
        per_frame = per_frame.view(n, t, -1)
        pooled = torch.cat([per_frame.mean(dim=1), per_frame.amax(dim=1)], dim=1)
        return F.relu(self.temporal(pooled))


class AudioEncoder(nn.Module):
    """Log-mel ``(N, 1, n_mels, F)`` -> ``(N, D)``: a small 2-D CNN, global pooling."""

    def __init__(self, channels: tuple[int, ...], dim: int, kind: str = "stride") -> None:
        super().__init__()
        self.cnn = _conv_stack(channels, kind)
        self.channels_last = _use_channels_last(self.cnn, kind)
        self.proj = nn.Linear(2 * channels[-1], dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            logmel = logmel.contiguous(memory_format=torch.channels_last)
        return F.relu(self.proj(_global_pool(self.cnn(logmel))))


class TextEncoder(nn.Module):
    """Hashed n-gram ids (``tokens`` (N_tok,), ``offsets`` (B,)) -> ``(B, D)``:
    mean ``EmbeddingBag`` then a linear layer."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.relu(self.proj(self.bag(tokens, offsets)))


# ----------------------------------------------------------------------------- fusion


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 of ``(B, M)`` scores among True ``mask`` entries only;
    absent entries get exactly 0 and an all-absent row is all zeros (no NaN)."""
    filled = scores.float().masked_fill(~mask, float("-inf"))
    any_present = mask.any(dim=1, keepdim=True)
    filled = torch.where(any_present, filled, torch.zeros_like(filled))
    return torch.softmax(filled, dim=1) * mask


def weighted_sum(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(B, M, D)`` embeddings, ``(B, M)`` weights -> ``(B, D)``."""
    return torch.einsum("bmd,bm->bd", stack, weights.to(stack.dtype))


class FusionModel(nn.Module):
    """Per-modality encoders + fusion + head; see the module docstring."""

    temperature: torch.Tensor
    mask_columns: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.modalities = cfg.modalities
        # Column of each model modality in the features' (B, 3) mask.
        self.register_buffer("mask_columns",
                             torch.tensor([MODALITIES.index(m) for m in cfg.modalities]),
                             persistent=False)
        self.encoders = nn.ModuleDict()
        if "video" in cfg.modalities:
            self.encoders["video"] = VideoEncoder(cfg.video_channels, d, cfg.encoder,
                                                  cfg.video_stem)
        if "audio" in cfg.modalities:
            self.encoders["audio"] = AudioEncoder(cfg.audio_channels, d, cfg.encoder)
        if "text" in cfg.modalities:
            self.encoders["text"] = TextEncoder(cfg.text_buckets, d)
        m = len(cfg.modalities)
        if cfg.fusion == "concat":
            self.absent = nn.Parameter(torch.zeros(m, d))
            fused_dim = m * d + m
        else:
            fused_dim = d
        if cfg.fusion == "weighted":
            self.modality_logits = nn.Parameter(torch.zeros(m))
        if cfg.fusion == "attention":
            self.gate = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
            # Tells the gate which modality it sees.
            self.modality_bias = nn.Parameter(torch.zeros(m, d))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fused_dim, d),
                                  nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
                                  nn.Linear(d, len(cfg.classes)))
        self.register_buffer("temperature", torch.ones(()))

    # -- encoders ------------------------------------------------------------------------

    def model_mask(self, features: Features) -> torch.Tensor:
        """``(B, M)`` bool: presence of the model's own modalities."""
        return features.mask.index_select(1, self.mask_columns).bool()

    def encode(self, features: Features) -> dict[str, torch.Tensor]:
        """``{modality: (B, D)}``; encoders see only rows where the modality is present."""
        mask = self.model_mask(features)
        b, d = features.batch_size, self.cfg.embed_dim
        out: dict[str, torch.Tensor] = {}
        for j, name in enumerate(self.modalities):
            if name == "text":
                # EmbeddingBag is per-row already; absent rows are masked out in fusion.
                out[name] = (self.encoders[name](features.tokens, features.offsets)
                             * mask[:, j:j + 1])
                continue
            x = features.frames if name == "video" else features.logmel
            rows = mask[:, j].nonzero().squeeze(1)
            if rows.numel() == b:
                out[name] = self.encoders[name](x)
                continue
            emb = torch.zeros(b, d, device=x.device, dtype=x.dtype)
            if rows.numel():
                enc = self.encoders[name](x.index_select(0, rows))
                emb = emb.to(enc.dtype).index_copy(0, rows, enc)
            out[name] = emb
        return out

    # -- fusion --------------------------------------------------------------------------

    def fusion_weights(self, embeddings: Mapping[str, torch.Tensor],
                       mask: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` weight of each modality in the fused vector (0 for absent ones)."""
        fusion = self.cfg.fusion
        mask = mask.bool()
        if fusion in ("mean", "concat"):
            return mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        if fusion == "weighted":
            return masked_softmax(self.modality_logits.expand(mask.shape[0], -1), mask)
        stack = torch.stack([embeddings[m] for m in self.modalities], dim=1)  # (B, M, D)
        scores = self.gate(stack + self.modality_bias.to(stack.dtype)).squeeze(2)
        return masked_softmax(scores, mask)

    def fuse(self, embeddings: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Embeddings + ``(B, M)`` model mask -> logits ``(B, n_classes)``."""
        mask = mask.bool()
        stack = torch.stack([embeddings[m] for m in self.modalities], dim=1)  # (B, M, D)
        if self.cfg.fusion == "concat":
            slots = torch.where(mask.unsqueeze(2), stack, self.absent.to(stack.dtype).unsqueeze(0))
            fused = torch.cat([slots.flatten(1), mask.to(stack.dtype)], dim=1)
        else:
            fused = weighted_sum(stack, self.fusion_weights(embeddings, mask))
        return self.head(fused)

    # -- public --------------------------------------------------------------------------

    def forward(self, features: Features) -> torch.Tensor:
        """Uncalibrated logits ``(B, n_classes)``."""
        return self.fuse(self.encode(features), self.model_mask(features))

    def calibrated_logits(self, features: Features) -> torch.Tensor:
        """``forward(features) / temperature`` ``(B, n_classes)``, in float32."""
        return self.forward(features).float() / self.temperature

    def predict_proba(self, features: Features) -> torch.Tensor:
        """Calibrated class probabilities ``(B, n_classes)`` float32."""
        return torch.softmax(self.calibrated_logits(features), dim=1)

    def set_temperature(self, t: float) -> None:
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        self.temperature.fill_(float(t))  # in place: keeps device and dtype
