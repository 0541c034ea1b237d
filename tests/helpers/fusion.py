"""Tiny fusion models and synthetic windows for the fusion tests (fast on 2 CPU cores)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from streamfuse.config import AlignConfig
from streamfuse.fusion.artifact import save_artifact
from streamfuse.fusion.features import Preprocessing
from streamfuse.fusion.model import FusionModel, ModelConfig
from streamfuse.wire.schema import Window

CLASSES = ("zero", "one", "two")
SAMPLE_RATE = 4000


def tiny_prep(align: AlignConfig | None = None) -> Preprocessing:
    """16x16 frames, 4 kHz audio, 16 mels, 512 text buckets."""
    return Preprocessing.from_align(align or AlignConfig(), sample_rate=SAMPLE_RATE, image_size=16,
                                    n_fft=256, hop_length=128, n_mels=16, text_buckets=512, max_tokens=64)


def tiny_model(prep: Preprocessing, fusion: str = "attention", *, classes: Sequence[str] = CLASSES,
               seed: int = 0, modalities: Sequence[str] = ("video", "audio", "text"),
               encoder: str = "stride") -> FusionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig.for_preprocessing(classes, prep, fusion=fusion, modalities=tuple(modalities), embed_dim=16,
                                        video_channels=(4, 8), audio_channels=(4, 8), dropout=0.0,
                                        encoder=encoder)
    return FusionModel(cfg).eval()


def save_tiny(directory: Path, align: AlignConfig, *, fusion: str = "attention", seed: int = 0) -> str:
    prep = tiny_prep(align)
    return save_artifact(directory, tiny_model(prep, fusion, seed=seed), prep, align=align,
                         extra={"training": {"synthetic": True}, "metrics": {"accuracy": 0.0}})


def make_window(rng: np.random.Generator, *, source: str = "room1", index: int = 0,
                video: bool = True, audio: bool = True, text: bool = True, jpeg: bool = False,
                label: int | None = None, samplerate: int = SAMPLE_RATE, frames: int = 4,
                window_ns: int = 1_000_000_000, size: tuple[int, int] = (24, 32),
                emit_ns: int = 0, cues: Sequence[str] = ("video", "audio", "text")) -> Window:
    """A window of random content; with ``label`` the modalities in ``cues`` also
    carry a class cue (a bright square's position, a tone's pitch, a word)."""
    h, w = size
    imgs: list[np.ndarray | bytes] = []
    if video:
        for _ in range(frames):
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            if label is not None and "video" in cues:
                x0 = label * (w // 3)
                img[h // 4: 3 * h // 4, x0: x0 + w // 3] = 255
            imgs.append(cv2.imencode(".jpg", img)[1].tobytes() if jpeg else img)
    wave = None
    n = round(window_ns * samplerate / 1e9)
    if audio:
        wave = 0.1 * rng.standard_normal((n, 1)).astype(np.float32)
        if label is not None and "audio" in cues:
            t = np.arange(n) / samplerate
            wave[:, 0] += 0.5 * np.sin(2 * np.pi * (200 + 500 * label) * t).astype(np.float32)
    texts: list[str] = []
    if text:
        words = ["hello", "there", "digit", "maybe", "ok"]
        texts = [" ".join(rng.choice(words, 3))]
        if label is not None and "text" in cues:
            texts.append(f"it is {CLASSES[label]}")
    t0 = index * window_ns // 2
    return Window(source=source, seq=index, t_start_ns=t0, t_end_ns=t0 + window_ns,
                  present={"video": video, "audio": audio, "text": text},
                  frames=imgs, frame_encoding="jpeg" if jpeg else "raw",
                  frame_t_ns=[t0 + i for i in range(len(imgs))], audio=wave,
                  samplerate=samplerate if audio else 0, audio_coverage=1.0 if audio else 0.0,
                  texts=texts, text_t_ns=[t0] * len(texts), close_ns=t0 + window_ns + 1_000_000,
                  emit_ns=emit_ns)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Import into a test module: one torch thread (on 2 shared cores, two made tests ~10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
