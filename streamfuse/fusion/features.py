"""Window -> model input: pure preprocessing shared by the worker and the trainer.

Public API (the trainer and the worker both call exactly these, so there is no
train/serve skew):

- :class:`Preprocessing` — frozen settings stored in the artifact manifest
  (``to_dict`` / ``from_dict``); ``Preprocessing.from_align(cfg.align)`` fills
  ``frames_per_window`` and ``window_samples`` from the aligner parameters.
- :func:`collate` ``(windows, prep) -> RawBatch`` — cheap CPU work: JPEG/raw
  frames to grayscale ``(B, T, H, W)`` uint8 at ``image_size``, audio mixed to
  mono ``(B, S)`` float32, hashed text n-grams as ``tokens``/``offsets`` for an
  ``nn.EmbeddingBag``, and the presence ``mask`` ``(B, 3)`` bool in the order of
  :data:`MODALITIES` (video, audio, text). Never raises on bad window content:
  a frame that does not decode marks video absent for that row and is listed in
  ``RawBatch.problems`` for the caller to count.
- :meth:`RawBatch.select` ``(rows) -> RawBatch`` — a subset (the trainer can
  collate a whole data set once and slice mini-batches from it).
- :func:`to_device` ``(raw, prep, device) -> Features`` — the rest, on the
  model's device: audio at another sample rate resampled with torchaudio, log-mel
  (torchaudio ``Spectrogram`` + ``MelScale``, see :class:`MelPower`), normalisation
  of frames and log-mel.
  On CUDA the host tensors are pinned and copied with ``non_blocking=True``.
- :func:`tokenize` ``(texts, prep) -> np.ndarray`` — hashed word / word-bigram /
  character n-gram ids in ``[1, text_buckets)``; no vocabulary, no download.
- :class:`Features` — what :class:`streamfuse.fusion.model.FusionModel` takes;
  ``features.with_mask(mask)`` returns a copy with another presence mask (modality
  dropout and ablation: set columns False).

Why frames are resized on the CPU: decoding (JPEG) has to happen there anyway,
and a 32x32 grayscale frame is ~300x fewer bytes to copy to the device than a
640x480 BGR one. Everything that costs arithmetic (resampling, STFT, mel,
normalisation) runs on the device.

Shapes: B windows, T = ``frames_per_window``, H = W = ``image_size``,
S = ``window_samples``, F = ``n_mel_frames`` (``S // hop_length + 1``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from streamfuse.wire.schema import Window

MODALITIES = ("video", "audio", "text")
VIDEO, AUDIO, TEXT = 0, 1, 2

_WORD_RE = re.compile(r"\w+")
_NORMS = ("per_frame", "fixed")
_AUDIO_NORMS = ("per_window", "per_band", "none")
_EPS = 1e-5


class PreprocessingError(ValueError):
    """Preprocessing settings that cannot work (names the field)."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a window into model input; stored in the manifest.

    image_size: frames become ``image_size x image_size`` grayscale.
    frames_per_window: T (must equal ``align.frames_per_window``).
    frame_norm: ``per_frame`` (zero mean, unit std per frame: robust to lighting)
        or ``fixed`` (``(x/255 - 0.5) / 0.25``).
    sample_rate: Hz the model hears; windows at another rate are resampled.
    window_samples: S, audio samples per window at ``sample_rate``.
    n_fft, hop_length, n_mels, f_min, f_max: the log-mel front end (``f_max`` 0
        means ``sample_rate / 2``).
    audio_norm: ``per_window`` (standardise each window's log-mel), ``per_band`` (each mel
        band's mean over the window subtracted, then divided by the window's std: cepstral
        mean normalisation, which removes a stationary colouring such as a voice's long-term
        spectrum, a microphone or a steady noise) or ``none``.
    text_buckets: size of the hashed n-gram table (ids are in [1, text_buckets)).
    text_word_ngrams: words are hashed as 1..n-grams.
    text_char_ngrams: character n-gram sizes taken inside ``<word>``.
    max_tokens: the newest ``max_tokens`` ids of a window are kept.
    """

    image_size: int = 32
    frames_per_window: int = 4
    frame_norm: str = "per_frame"
    sample_rate: int = 16000
    window_samples: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 0.0
    audio_norm: str = "per_window"
    text_buckets: int = 1 << 14
    text_word_ngrams: int = 2
    text_char_ngrams: tuple[int, ...] = (3, 4)
    max_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("image_size", "frames_per_window", "sample_rate", "window_samples", "n_fft",
                     "hop_length", "n_mels", "max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise PreprocessingError(
                    f"preprocessing.{name}: expected a positive integer, got {v!r}")
        if self.text_buckets < 2:
            raise PreprocessingError(
                f"preprocessing.text_buckets: need at least 2, got {self.text_buckets}")
        if self.frame_norm not in _NORMS:
            raise PreprocessingError(
                f"preprocessing.frame_norm: expected one of {_NORMS}, got {self.frame_norm!r}")
        if self.audio_norm not in _AUDIO_NORMS:
            raise PreprocessingError(
                f"preprocessing.audio_norm: expected one of {_AUDIO_NORMS}, "
                f"got {self.audio_norm!r}")
        if self.n_fft > self.window_samples:
            raise PreprocessingError(
                f"preprocessing.n_fft: {self.n_fft} exceeds window_samples {self.window_samples}")
        if any((not isinstance(n, int)) or n <= 0 for n in self.text_char_ngrams):
            raise PreprocessingError(
                f"preprocessing.text_char_ngrams: expected positive integers, "
                f"got {self.text_char_ngrams!r}")

    @classmethod
    def from_align(cls, align: Any, **overrides: Any) -> Preprocessing:
        """Settings matching an :class:`~streamfuse.config.AlignConfig` (window length, T)."""
        sr = int(overrides.pop("sample_rate", cls.sample_rate))
        return cls(frames_per_window=align.frames_per_window, sample_rate=sr,
                   window_samples=round(align.window_ms * sr / 1000), **overrides)

    @property
    def n_mel_frames(self) -> int:
        """F: log-mel frames per window (``center=True`` STFT)."""
        return self.window_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["text_char_ngrams"] = list(self.text_char_ngrams)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or mistyped keys raise PreprocessingError."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k not in known:
                raise PreprocessingError(f"preprocessing.{k}: unknown key")
            if k == "text_char_ngrams":
                if not isinstance(v, (list, tuple)):
                    raise PreprocessingError(f"preprocessing.{k}: expected a list, got {v!r}")
                v = tuple(v)
            elif k in ("f_min", "f_max"):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise PreprocessingError(f"preprocessing.{k}: expected a number, got {v!r}")
                v = float(v)
            elif known[k].type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                raise PreprocessingError(f"preprocessing.{k}: expected an integer, got {v!r}")
            elif known[k].type in ("str", str) and not isinstance(v, str):
                raise PreprocessingError(f"preprocessing.{k}: expected a string, got {v!r}")
            kw[k] = v
        return cls(**kw)


# ----------------------------------------------------------------------------- text


def _hash(token: str, buckets: int) -> int:
    # crc32, not hash(): Python's str hash is salted per process.
    return zlib.crc32(token.encode("utf-8")) % (buckets - 1) + 1


def tokenize(texts: Sequence[str], prep: Preprocessing) -> np.ndarray:
    """Hashed n-gram ids ``(n,)`` int64 of a window's texts (oldest first).

    Words are lower-cased ``\\w+`` runs; tokens are word 1..``text_word_ngrams``-grams
    and character n-grams of ``<word>``; the newest ``max_tokens`` are kept.
    """
    ids: list[int] = []
    b = prep.text_buckets
    for text in texts:
        words = _WORD_RE.findall(text.lower())
        for n in range(1, prep.text_word_ngrams + 1):
            for i in range(len(words) - n + 1):
                ids.append(_hash("w" + str(n) + "|" + " ".join(words[i:i + n]), b))
        for w in words:
            padded = f"<{w}>"
            for n in prep.text_char_ngrams:
                for i in range(max(1, len(padded) - n + 1)):
                    ids.append(_hash("c|" + padded[i:i + n], b))
    return np.asarray(ids[-prep.max_tokens:], dtype=np.int64)


# ----------------------------------------------------------------------------- collate


@dataclass
class RawBatch:
    """CPU tensors for B windows, before device work.

    frames: ``(B, T, H, W)`` uint8 grayscale (zeros where video is absent).
    audio: ``(B, S)`` float32 mono at ``prep.sample_rate`` (zeros where absent or
        still to be resampled).
    resample: rows whose audio came at another rate: ``(row, samplerate,
        waveform (n,) float32)``; :func:`to_device` resamples them.
    tokens: ``(N,)`` int64 hashed n-gram ids of all rows, concatenated.
    offsets: ``(B,)`` int64 start of each row in ``tokens``.
    mask: ``(B, 3)`` bool presence (video, audio, text).
    problems: human-readable reasons a present stream was dropped (count them).
    """

    frames: torch.Tensor
    audio: torch.Tensor
    tokens: torch.Tensor
    offsets: torch.Tensor
    mask: torch.Tensor
    resample: tuple[tuple[int, int, torch.Tensor], ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def select(self, rows: Sequence[int] | torch.Tensor) -> RawBatch:
        """The sub-batch of ``rows`` (in that order)."""
        idx = torch.as_tensor(rows, dtype=torch.int64)
        ends = torch.cat([self.offsets[1:], torch.tensor([self.tokens.numel()])])
        parts = [self.tokens[self.offsets[i]:ends[i]] for i in idx.tolist()]
        lengths = torch.tensor([p.numel() for p in parts], dtype=torch.int64)
        offsets = torch.cumsum(lengths, 0) - lengths
        tokens = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        where = {r: i for i, r in enumerate(idx.tolist())}
        resample = tuple((where[r], sr, w) for r, sr, w in self.resample if r in where)
        return RawBatch(frames=self.frames[idx], audio=self.audio[idx], tokens=tokens,
                        offsets=offsets, mask=self.mask[idx], resample=resample)


_REDUCED = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
            (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's SOF marker, or None if none is found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
        i += 2 + length
    return None


def _reduced_flag(data: bytes, size: int) -> int:
    """Decode at 1/2, 1/4 or 1/8 scale when the result still covers ``size``:
    libjpeg then skips most of the inverse DCT, several times faster than a full
    decode followed by a resize."""
    hw = jpeg_size(data)
    if hw is not None:
        for factor, flag in _REDUCED:
            if min(hw) // factor >= size:
                return flag
    return cv2.IMREAD_GRAYSCALE


def gray_image(img: np.ndarray, size: int) -> np.ndarray | None:
    """A decoded image (BGR ``(h, w, 3)``, ``(h, w, 1)`` or gray ``(h, w)`` uint8) to
    ``(size, size)`` uint8 grayscale; None when it is none of those. Reads ``img``
    where it lies (a view into shared memory works) and returns a new array."""
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2 or img.dtype != np.uint8 or img.size == 0:
        return None
    if img.shape != (size, size):
        # INTER_AREA averages the pixels a target pixel covers (no aliasing).
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return np.array(img)


def gray_jpeg(data: bytes | memoryview | np.ndarray, size: int) -> np.ndarray | None:
    """A JPEG file's bytes to ``(size, size)`` grayscale, decoded at the smallest scale
    that still covers ``size``; None when it does not decode."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if not buf.size:
        return None
    # The SOF marker sits in the first segments: no need to copy a shared frame whole.
    head = data if isinstance(data, bytes) else bytes(buf[:65536])
    decoded: np.ndarray | None = cv2.imdecode(buf, _reduced_flag(head, size))
    return None if decoded is None else gray_image(decoded, size)


def _gray(frame: np.ndarray | bytes, size: int) -> np.ndarray | None:
    """One inline frame to ``(size, size)`` uint8 grayscale; None when it does not decode."""
    if isinstance(frame, np.ndarray):
        return gray_image(frame, size)
    if isinstance(frame, (bytes, memoryview)):
        return gray_jpeg(frame, size)
    return None  # a frame by reference needs a FrameSource


class FrameSource(Protocol):
    """Where :func:`collate` gets a window's frames when they are not all inline
    (:class:`streamfuse.fusion.frames.WindowFrames`)."""

    def gray(self, w: Window, i: int, size: int) -> np.ndarray | None:
        """Frame ``i`` of ``w`` as ``(size, size)`` uint8 gray, or None."""
        ...


def _window_frames(w: Window, prep: Preprocessing,
                   source: FrameSource | None) -> tuple[np.ndarray | None, str]:
    if not w.frames:
        return None, "no frames"
    t = prep.frames_per_window
    # The aligner sends exactly T frames; be lenient with another count (pick evenly).
    picks = (np.linspace(0, len(w.frames) - 1, t).round().astype(int)
             if len(w.frames) != t else range(t))
    out = np.empty((t, prep.image_size, prep.image_size), dtype=np.uint8)
    cache: dict[int, np.ndarray] = {}
    for j, i in enumerate(picks):
        i = int(i)
        if i not in cache:
            g = source.gray(w, i, prep.image_size) if source is not None \
                else _gray(w.frames[i], prep.image_size)  # type: ignore[arg-type]
            if g is None:
                return None, f"frame {i} ({w.frame_encoding}) did not decode"
            cache[i] = g
        out[j] = cache[i]
    return out, ""


def _mono(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1, dtype=np.float32) if a.shape[1] > 1 else a[:, 0]
    return a


def resamplable(rate: int, target: int) -> bool:
    """Rates torchaudio can convert cheaply: its polyphase kernel grows with
    ``rate / gcd(rate, target)``, so a rate like 44101 Hz (gcd 1) would cost
    gigabytes. Every common rate (8, 11.025, 22.05, 44.1, 48, 96 kHz) passes."""
    return 1000 <= rate <= 384_000 and math.gcd(rate, target) >= 25


def collate(windows: Sequence[Window], prep: Preprocessing,
            source: FrameSource | None = None) -> RawBatch:
    """Stack windows into a :class:`RawBatch` (CPU only; never raises on content).
    ``source`` reads frames by reference and caches decoded ones (else inline only)."""
    b, t, s = len(windows), prep.frames_per_window, prep.window_samples
    frames = np.zeros((b, t, prep.image_size, prep.image_size), dtype=np.uint8)
    audio = np.zeros((b, s), dtype=np.float32)
    mask = np.zeros((b, 3), dtype=bool)
    token_parts: list[np.ndarray] = []
    offsets = np.zeros(b, dtype=np.int64)
    resample: list[tuple[int, int, torch.Tensor]] = []
    problems: list[str] = []
    n_tok = 0
    for row, w in enumerate(windows):
        if w.present.get("video", False):
            f, why = _window_frames(w, prep, source)
            if f is not None:
                frames[row] = f
                mask[row, VIDEO] = True
            else:
                problems.append(f"{w.source}@{w.t_start_ns}: video: {why}")
        if w.present.get("audio", False) and w.audio is not None and w.audio.size:
            mono = _mono(w.audio)
            if not np.isfinite(mono).all():
                problems.append(f"{w.source}@{w.t_start_ns}: audio: non-finite samples")
            elif (w.samplerate not in (0, prep.sample_rate)
                  and not resamplable(w.samplerate, prep.sample_rate)):
                problems.append(f"{w.source}@{w.t_start_ns}: audio: "
                                f"cannot resample {w.samplerate} Hz to {prep.sample_rate} Hz")
            elif w.samplerate in (0, prep.sample_rate):
                n = min(s, mono.shape[0])
                audio[row, :n] = mono[:n]
                mask[row, AUDIO] = True
            else:
                resample.append((row, int(w.samplerate), torch.from_numpy(np.array(mono))))
                mask[row, AUDIO] = True
        offsets[row] = n_tok
        if w.present.get("text", bool(w.texts)) and w.texts:
            ids = tokenize(w.texts, prep)
            if ids.size:
                token_parts.append(ids)
                n_tok += ids.size
                mask[row, TEXT] = True
    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, dtype=np.int64)
    return RawBatch(frames=torch.from_numpy(frames), audio=torch.from_numpy(audio),
                    tokens=torch.from_numpy(tokens), offsets=torch.from_numpy(offsets),
                    mask=torch.from_numpy(mask), resample=tuple(resample), problems=tuple(problems))


# ----------------------------------------------------------------------------- device


@dataclass
class Features:
    """Model input on its device.

    frames: ``(B, T, 1, H, W)`` float32, normalised.
    logmel: ``(B, 1, n_mels, F)`` float32, normalised log-mel.
    tokens: ``(N,)`` int64; offsets: ``(B,)`` int64 (``nn.EmbeddingBag`` input).
    mask: ``(B, 3)`` bool presence (video, audio, text); a False column means
        the modality contributes nothing, whatever the other tensors hold.
    """

    frames: torch.Tensor
    logmel: torch.Tensor
    tokens: torch.Tensor
    offsets: torch.Tensor
    mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def with_mask(self, mask: torch.Tensor) -> Features:
        """A copy with another presence mask ``(B, 3)`` bool (ANDed with nothing: used as is)."""
        return dataclasses.replace(self, mask=mask.to(device=self.mask.device, dtype=torch.bool))

    def to(self, device: torch.device | str) -> Features:
        return Features(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


class MelPower(torch.nn.Module):
    """``(B, S)`` waveform -> ``(B, n_mels, F)`` mel power spectrogram.

    torchaudio's ``Spectrogram`` (complex output) and ``MelScale``; the same as
    ``torchaudio.transforms.MelSpectrogram(power=2)`` except that the power is
    taken as ``re^2 + im^2`` rather than ``abs()**2``: on CPU the complex ``abs``
    (a square root per bin, then squared again) cost twice as much.
    """

    def __init__(self, prep: Preprocessing) -> None:
        super().__init__()
        import torchaudio

        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=prep.n_fft, hop_length=prep.hop_length, power=None, center=True)
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=prep.n_mels, sample_rate=prep.sample_rate, f_min=prep.f_min,
            f_max=prep.f_max or None, n_stft=prep.n_fft // 2 + 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(waveform)
        return self.mel_scale(spec.real.square() + spec.imag.square())


@functools.lru_cache(maxsize=8)
def _mel(prep: Preprocessing, device: str) -> torch.nn.Module:
    return MelPower(prep).to(device)


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device.type == device.type and device.index in (None, t.device.index):
        return t  # already there ("cuda" matches a tensor on "cuda:0")
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _standardise(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + _EPS)


def log_mel(audio: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """``(B, S)`` float32 waveform -> ``(B, 1, n_mels, F)`` normalised log-mel, on audio's
    device."""
    spec = _mel(prep, str(audio.device))(audio.float())
    spec = torch.log(spec + 1e-6)
    if prep.audio_norm == "per_window":
        spec = _standardise(spec, (1, 2))
    elif prep.audio_norm == "per_band":
        spec = spec - spec.mean(dim=2, keepdim=True)
        spec = spec / (spec.std(dim=(1, 2), keepdim=True, unbiased=False) + _EPS)
    return spec.unsqueeze(1)


def to_device(raw: RawBatch, prep: Preprocessing, device: torch.device | str = "cpu") -> Features:
    """Finish preprocessing on ``device`` (see module docstring). Shapes in :class:`Features`."""
    import torchaudio.functional as AF

    dev = torch.device(device)
    frames = _move(raw.frames, dev).unsqueeze(2).float()
    if prep.frame_norm == "per_frame":
        frames = _standardise(frames, (2, 3, 4))
    else:
        frames = (frames / 255.0 - 0.5) / 0.25
    audio = _move(raw.audio, dev)
    if raw.resample:
        audio = audio.clone()
        for row, sr, wave in raw.resample:
            res = AF.resample(_move(wave, dev), sr, prep.sample_rate)
            n = min(prep.window_samples, res.shape[0])
            audio[row, :n] = res[:n]
    return Features(frames=frames, logmel=log_mel(audio, prep), tokens=_move(raw.tokens, dev),
                    offsets=_move(raw.offsets, dev), mask=_move(raw.mask, dev))
