"""Handwritten digit images and how a camera sees them (for ``avdigits``).

Images come from scikit-learn's bundled digits (1,797 images, 8x8) or an MNIST
idx file (28x28, optionally gzipped, with its ``labels-idx1`` file beside it).
:func:`render_scene` places one image on a sheet of paper in a 128x128 camera
view (position, scale, rotation, lighting, blur and sometimes an occluding
finger); :func:`camera_frame` adds per-frame hand jitter and sensor noise.
Everything is driven by a numpy ``Generator`` passed in, so it is deterministic.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class DigitImages:
    """``ink``: ``(n, h, w)`` float32 in [0, 1] (1 = ink); ``labels``: ``(n,)`` int digits."""

    ink: np.ndarray
    labels: np.ndarray
    origin: str


def load_images(spec: str) -> DigitImages:
    """``"sklearn"`` or the path of an MNIST ``*-images-idx3-ubyte[.gz]`` file.

    Raises ``ValueError`` with a one-line reason for anything unreadable.
    """
    if spec == "sklearn":
        from sklearn.datasets import load_digits

        d = load_digits()
        return DigitImages((d.images / 16.0).astype(np.float32), d.target.astype(np.int64),
                           "sklearn")
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--images {spec}: expected 'sklearn' or an MNIST "
                         "*-images-idx3-ubyte[.gz] file")
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if labels_path == path or not labels_path.exists():
        raise ValueError(f"{path}: need the MNIST labels file beside it ({labels_path.name})")
    images = _read_idx(path)
    labels = _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{path}: expected (n, h, w) images and (n,) labels, "
                         f"got {images.shape} and {labels.shape}")
    return DigitImages(images.astype(np.float32) / 255.0, labels.astype(np.int64), str(path))


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format): magic, dims, then uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of uint8")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"{path}: {data.size} bytes of data, dims {dims} need {int(np.prod(dims))}")
    return data.reshape(dims)


@dataclass(frozen=True)
class Scene:
    """One segment's view: ``base`` is the clean BGR float image ``(size, size, 3)`` in [0, 255]."""

    base: np.ndarray
    noise_std: float
    jitter_px: float


def render_scene(ink: np.ndarray, rng: np.random.Generator, *, size: int = 128,
                 occlude: bool = False) -> Scene:
    """A digit on paper as the camera sees it for one segment.

    ``ink``: ``(h, w)`` in [0, 1]. The digit's height is 45-85 % of the view,
    anywhere that keeps most of it in view, rotated up to 15 degrees; the
    paper is lit unevenly (a linear gradient), tinted, and slightly blurred.
    """
    h, w = ink.shape
    scale = rng.uniform(0.45, 0.85) * size / max(h, w)
    angle = rng.uniform(-15, 15)
    extent = scale * max(h, w)
    cx = rng.uniform(extent * 0.45, size - extent * 0.45)
    cy = rng.uniform(extent * 0.45, size - extent * 0.45)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += cx - w / 2
    m[1, 2] += cy - h / 2
    # Cubic upsampling of 8x8 sklearn digits would ring; linear keeps strokes plausible.
    mask = cv2.warpAffine(ink, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    mask = np.clip(mask, 0.0, 1.0)

    paper = rng.uniform(150, 245)
    ink_level = rng.uniform(10, 90)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gx, gy = rng.uniform(-0.35, 0.35, size=2)
    light = 1.0 + gx * (xx - 0.5) + gy * (yy - 0.5)
    gain = rng.uniform(0.5, 1.1)  # dim rooms as well as bright ones
    tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    grey = (paper * (1 - mask) + ink_level * mask) * light * gain
    base = grey[..., None] * tint[None, None, :]
    if occlude:
        base = _occlude(base, cx, cy, extent, rng)
    blur = rng.uniform(0.0, 1.6)
    if blur > 0.3:
        base = cv2.GaussianBlur(base, (0, 0), blur)
    noise_std = rng.uniform(2.0, 9.0) / max(gain, 0.5)  # darker scenes are noisier
    return Scene(np.clip(base, 0, 255).astype(np.float32), float(noise_std),
                 float(rng.uniform(0.0, 2.0)))


def _occlude(img: np.ndarray, cx: float, cy: float, extent: float,
             rng: np.random.Generator) -> np.ndarray:
    """A finger-coloured rounded bar over part of the digit (never all of it)."""
    out = img.copy()
    skin = np.array([rng.uniform(90, 150), rng.uniform(120, 180), rng.uniform(170, 230)],
                    np.float32)
    thick = int(max(4, extent * rng.uniform(0.15, 0.3)))
    side = rng.integers(4)
    half = extent / 2
    # A bar entering from one edge of the digit's box and stopping near its centre.
    if side == 0:
        p0, p1 = (cx - half * 1.6, cy + rng.uniform(-half, half)), (cx - half * 0.2, cy)
    elif side == 1:
        p0, p1 = (cx + half * 1.6, cy + rng.uniform(-half, half)), (cx + half * 0.2, cy)
    elif side == 2:
        p0, p1 = (cx + rng.uniform(-half, half), cy - half * 1.6), (cx, cy - half * 0.2)
    else:
        p0, p1 = (cx + rng.uniform(-half, half), cy + half * 1.6), (cx, cy + half * 0.2)
    cv2.line(out, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), skin.tolist(), thick,
             cv2.LINE_AA)
    return out


def camera_frame(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One BGR uint8 frame: the scene shifted by hand jitter, plus sensor noise."""
    size = scene.base.shape[0]
    dx, dy = rng.normal(0.0, scene.jitter_px, size=2)
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    img = np.asarray(cv2.warpAffine(scene.base, m, (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT), dtype=np.float32)
    img += rng.normal(0.0, scene.noise_std, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()
