"""Test media generated on the spot: counter-coded frames and videos, espeak-ng speech.

Every frame carries its counter twice: as visible text (for people looking at a
recording) and as 16 black/white cells across the top sixth of the image (for
tests). The cells are placed in proportion to the image size and are large, so
the counter survives JPEG, MJPEG and resizing::

    from tests.helpers import media

    img = media.counter_frame(7, 640, 480)          # (480, 640, 3) uint8 BGR
    assert media.read_counter(img) == 7
    path = media.make_video(tmp_path / "v.avi", n_frames=30, fps=30, width=320, height=240)
    wav = media.speech_wav(tmp_path / "s.wav", "seven three one")   # 16 kHz mono s16
    samples, rate = media.read_wav(wav)                             # float32 in [-1, 1]

``read_counter`` returns None when the image has no readable counter (e.g. a
grey frame), so tests can tell a broken frame from a wrong one.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import cv2
import numpy as np

BITS = 16


def counter_frame(n: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A BGR frame ``(height, width, 3)`` uint8 carrying ``n`` (mod 2**16)."""
    n &= (1 << BITS) - 1
    img = np.zeros((height, width, 3), np.uint8)
    # A moving gradient so consecutive frames differ everywhere (like a real camera).
    img[:, :, 0] = (np.arange(width, dtype=np.uint32)[None, :] + n * 3).astype(np.uint8)
    img[:, :, 1] = 60
    band = max(height // 6, 4)
    img[:band] = 128  # mid-grey band: cells are pure black/white on it
    for i in range(BITS):
        x0, x1 = i * width // BITS, (i + 1) * width // BITS
        bit = (n >> (BITS - 1 - i)) & 1
        img[:band, x0:x1] = 255 if bit else 0
    scale = max(height / 240, 0.4)
    cv2.putText(img, f"{n:05d}", (width // 20, band + int(40 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return img


def read_counter(img: np.ndarray) -> int | None:
    """The counter coded in ``img`` (any size, BGR or grey), or None when unreadable."""
    h, w = img.shape[:2]
    band = max(h // 6, 4)
    img = img[:band]  # only the band carries the bits (keeps this cheap on big frames)
    if img.ndim == 3:
        img = img.mean(axis=2)
    n = 0
    for i in range(BITS):
        x0, x1 = i * w // BITS, (i + 1) * w // BITS
        # sample the middle of the cell, away from JPEG ringing at the edges
        cell = img[band // 4: 3 * band // 4, x0 + (x1 - x0) // 4: x1 - (x1 - x0) // 4]
        if cell.size == 0:
            return None
        m = float(cell.mean())
        if 80 < m < 176:
            return None  # neither black nor white: not a counter frame
        n = (n << 1) | int(m >= 128)
    return n


def jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def make_video(path: str | Path, *, n_frames: int = 30, fps: float = 30.0, width: int = 320,
               height: int = 240, start: int = 0) -> Path:
    """Write an MJPG ``.avi`` of counter frames ``start .. start+n_frames-1``; returns the path."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    try:
        for i in range(n_frames):
            writer.write(counter_frame(start + i, width, height))
    finally:
        writer.release()
    return path


def espeak_missing() -> str | None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install espeak-ng sox)"
    return None


def speech_wav(path: str | Path, text: str = "seven three one", *, rate: int = 16000,
               voice: str | None = None, speed_wpm: int | None = None) -> Path:
    """espeak-ng speech resampled by sox to ``rate`` Hz mono 16-bit; returns ``path``."""
    path = Path(path)
    raw = path.with_suffix(".espeak.wav")
    cmd = ["espeak-ng", "-w", str(raw)]
    if voice:
        cmd += ["-v", voice]
    if speed_wpm:
        cmd += ["-s", str(speed_wpm)]
    subprocess.run([*cmd, text], check=True, capture_output=True, timeout=60)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(path)],
                   check=True, capture_output=True, timeout=60)
    raw.unlink()
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM wav as float32 ``(frames, channels)`` in [-1, 1], and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return (data.astype(np.float32) / 32768.0).reshape(-1, w.getnchannels()), w.getframerate()


def best_correlation(recorded: np.ndarray, reference: np.ndarray) -> float:
    """Max normalised cross-correlation of ``reference`` against any offset in ``recorded``.

    Both 1-D float arrays; ``recorded`` is the longer. 1.0 means an exact (scaled) copy.
    """
    rec = np.asarray(recorded, np.float64).ravel()
    ref = np.asarray(reference, np.float64).ravel()
    if len(rec) < len(ref):
        return 0.0
    n = len(ref)
    # FFT cross-correlation, then normalise by the energy of each window of rec.
    size = 1 << int(np.ceil(np.log2(len(rec) + n)))
    xc = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)[: len(rec) - n + 1]
    csum = np.concatenate([[0.0], np.cumsum(rec * rec)])
    energy = csum[n:] - csum[:-n]
    denom = np.sqrt(np.maximum(energy, 1e-12) * float(ref @ ref))
    return float(np.max(xc / denom))
