"""Model artifacts: a directory with ``model.safetensors`` and ``manifest.json`` (README.md).

Public API:

- :func:`save_artifact` ``(directory, model, prep, *, align, extra=None) -> model_id``
  writes the weights (safetensors, weights only) and the manifest. ``extra`` may
  hold ``"training"`` (data summary: recordings, windows, class counts, epochs,
  seed, time...) and ``"metrics"`` (validation accuracy, ECE, ...) dicts; any
  other key is stored under ``"extra"``. Files are written beside and renamed
  into place, weights first, so a worker polling the directory sees either the
  old or the new artifact (or a mismatch it rejects and retries).
- :func:`load_artifact` ``(directory, *, align=None, device="cpu") -> LoadedModel``
  validates everything and returns the model in eval mode on ``device``.
  ``align`` (an :class:`~streamfuse.config.AlignConfig`) is checked against the
  aligner parameters the model was trained with.
- :func:`read_manifest` ``(directory) -> dict`` the validated manifest alone.
- :func:`model_id` — how ids are made: ``sha256`` over the weight file's bytes and
  the canonical JSON of the manifest's core (classes, modalities, architecture,
  fusion, preprocessing, align), first 16 hex digits. The same weights and
  settings give the same id whatever the creation time or metrics.
- Errors: every failure is an :class:`ArtifactError` subclass whose message says
  what and where: :class:`ArtifactMissing`, :class:`PickledContentError`,
  :class:`CorruptWeightsError` (truncated or malformed safetensors),
  :class:`ManifestError`, :class:`AlignMismatchError` (names both values),
  :class:`UnknownArchitectureError` (architecture or fusion), :class:`TensorMismatchError`
  (missing, unexpected or mis-shaped tensors), :class:`ModelIdMismatchError`.

Safety: nothing is unpickled and no code from the artifact runs. The weights file
is parsed by hand (8-byte header length, JSON header, byte ranges) before
``safetensors`` reads it; ``.pt``/``.pkl``-style files are refused outright.

Aligner parameters: ``window_ms``, ``frames_per_window``, ``text_context_ms`` and
``max_text_messages`` decide what a window contains, so a difference is an
error. ``hop_ms`` and ``max_lateness_ms`` only decide when windows appear; a
difference is allowed and reported in :attr:`LoadedModel.warnings`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamfuse import __version__
from streamfuse.clock import NS_PER_S
from streamfuse.fusion.features import Preprocessing, PreprocessingError
from streamfuse.fusion.model import (
    ARCHITECTURE,
    ARCHITECTURE_VERSION,
    FUSIONS,
    FusionModel,
    ModelConfig,
    ModelConfigError,
)

FORMAT = "streamfuse-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
ALIGN_KEYS = ("window_ms", "hop_ms", "frames_per_window", "text_context_ms", "max_text_messages",
              "max_lateness_ms")
ALIGN_CONTENT_KEYS = ("window_ms", "frames_per_window", "text_context_ms", "max_text_messages")
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npy", ".npz")
_MAX_HEADER = 64 * 1024 * 1024
_MAX_MANIFEST = 4 * 1024 * 1024
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class ArtifactError(ValueError):
    """A model artifact that cannot be loaded; ``str()`` says what and where."""


class ArtifactMissing(ArtifactError):
    """No artifact (directory, weights or manifest) at the path."""


class PickledContentError(ArtifactError):
    """Pickled content where only safetensors/JSON are allowed."""


class CorruptWeightsError(ArtifactError):
    """``model.safetensors`` is truncated or malformed."""


class ManifestError(ArtifactError):
    """``manifest.json`` is malformed, incomplete or of an unknown format version."""


class AlignMismatchError(ArtifactError):
    """The model was trained with other aligner parameters than the config's."""


class UnknownArchitectureError(ArtifactError):
    """The manifest names an architecture, version or fusion this build does not know."""


class TensorMismatchError(ArtifactError):
    """Tensors missing, unexpected, or of the wrong shape or dtype."""


class ModelIdMismatchError(ArtifactError):
    """The recorded model id does not match the content (files from different saves)."""


@dataclass
class LoadedModel:
    """A validated artifact: the model (eval mode, on its device) and its settings."""

    model: FusionModel
    prep: Preprocessing
    manifest: dict[str, Any]
    model_id: str
    path: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.cfg.classes


# ----------------------------------------------------------------------------- ids


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _core(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in ("classes", "modalities", "architecture", "fusion",
                                         "preprocessing", "align")}


def model_id(weights: bytes, manifest: Mapping[str, Any]) -> str:
    """Content hash (16 hex digits) of the weight bytes and the manifest core."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(weights).digest())
    h.update(_canonical(_core(manifest)))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- save


def _align_dict(align: Any) -> dict[str, int]:
    if isinstance(align, Mapping):
        return {k: int(align[k]) for k in ALIGN_KEYS}
    return {k: int(getattr(align, k)) for k in ALIGN_KEYS}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_artifact(directory: str | Path, model: FusionModel, prep: Preprocessing, *, align: Any,
                  extra: Mapping[str, Any] | None = None, now_ns: int | None = None) -> str:
    """Write ``directory/model.safetensors`` and ``manifest.json``; returns the model id.

    ``align``: the AlignConfig (or a mapping with :data:`ALIGN_KEYS`) the model
    was trained with. ``now_ns``: creation time (epoch ns) for the manifest;
    omitted, the file is stamped from the clock module.
    """
    from safetensors.torch import save

    cfg = model.cfg
    if cfg.n_mels != prep.n_mels or cfg.text_buckets != prep.text_buckets:
        raise ArtifactError("model and preprocessing disagree on n_mels or text_buckets")
    align_d = _align_dict(align)
    if align_d["frames_per_window"] != prep.frames_per_window:
        raise ArtifactError(f"preprocessing.frames_per_window {prep.frames_per_window} != "
                            f"align.frames_per_window {align_d['frames_per_window']}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save(state, metadata={"format": FORMAT})
    extra = dict(extra or {})
    if now_ns is None:
        from streamfuse import clock

        now_ns = clock.now_ns()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": "",
        "classes": list(cfg.classes),
        "modalities": list(cfg.modalities),
        "architecture": {"name": ARCHITECTURE, "version": ARCHITECTURE_VERSION,
                         "config": cfg.to_dict()},
        "fusion": cfg.fusion,
        "preprocessing": prep.to_dict(),
        "align": align_d,
        "temperature": float(model.temperature),
        "training": extra.pop("training", {}),
        "metrics": extra.pop("metrics", {}),
        "extra": extra,
        "created": datetime.datetime.fromtimestamp(now_ns / NS_PER_S,
                                                   tz=datetime.timezone.utc).isoformat(),
        "created_ns": int(now_ns),
        "streamfuse_version": __version__,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                    for k, v in state.items()},
    }
    manifest["model_id"] = model_id(weights, manifest)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / WEIGHTS, weights)
    _write_atomic(d / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n")
    return str(manifest["model_id"])


# ----------------------------------------------------------------------------- load


def _looks_pickled(head: bytes) -> bool:
    # pickle protocol 2+ starts with PROTO (0x80); torch.save writes a zip archive.
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def _check_dir(d: Path) -> None:
    if not d.is_dir():
        raise ArtifactMissing(f"{d}: no model artifact (directory does not exist)")
    pickled = sorted(p.name for p in d.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickled:
        raise PickledContentError(f"{d / pickled[0]}: refusing an artifact that ships "
                                  f"pickle-format files ({', '.join(pickled)}); "
                                  f"streamfuse loads only {WEIGHTS} + {MANIFEST}")
    for name in (WEIGHTS, MANIFEST):
        if not (d / name).is_file():
            raise ArtifactMissing(f"{d}: no model artifact ({name} is missing)")


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _header_entry(path: Path, name: str, info: Any) -> tuple[int, int, str, list[int]]:
    """``(start, stop, dtype, shape)`` of one header entry, or :class:`CorruptWeightsError`
    (non-negative integers, a string and a list of them: JSON can hold anything there)."""
    try:
        start, stop = info["data_offsets"]
        dtype, shape = info["dtype"], info["shape"]
    except (TypeError, KeyError, ValueError):
        start = stop = dtype = shape = None
    if not (_is_index(start) and _is_index(stop) and isinstance(dtype, str)
            and isinstance(shape, list) and all(_is_index(s) for s in shape)):
        raise CorruptWeightsError(f"{path}: tensor {name!r} has a malformed header entry")
    return start, stop, dtype, shape


def _parse_safetensors(path: Path, data: bytes) -> dict[str, dict[str, Any]]:
    """Validate the safetensors layout by hand; returns ``{name: {dtype, shape, data_offsets}}``."""
    if len(data) < 8:
        raise CorruptWeightsError(f"{path}: truncated ({len(data)} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    header: Any = None
    if n <= _MAX_HEADER and 8 + n <= len(data):
        try:
            header = json.loads(data[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if header is None and _looks_pickled(data[:4]):
        # Only now: a valid safetensors header length may well start with 0x80.
        raise PickledContentError(f"{path}: holds pickled data (a torch.save/pickle file), "
                                  "not safetensors; re-export the weights with safetensors")
    if n > _MAX_HEADER:
        raise CorruptWeightsError(f"{path}: header length {n} is implausible (corrupt file)")
    if 8 + n > len(data):
        raise CorruptWeightsError(f"{path}: truncated (header needs {8 + n} bytes, "
                                  f"file has {len(data)})")
    if header is None:
        raise CorruptWeightsError(f"{path}: safetensors header is not valid JSON "
                                  "(corrupt, or not a safetensors file)")
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    body = len(data) - 8 - n
    end = 0
    for name, info in header.items():
        start, stop, dtype, shape = _header_entry(path, name, info)
        if dtype not in _DTYPES:
            raise CorruptWeightsError(
                f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        numel = 1
        for s in shape:
            numel *= s
        if stop - start != numel * _DTYPES[dtype].itemsize or start < 0:
            raise CorruptWeightsError(
                f"{path}: tensor {name!r} byte range does not match its shape")
        end = max(end, stop)
    if end > body:
        raise CorruptWeightsError(f"{path}: truncated (tensors need {end} data bytes, "
                                  f"file has {body})")
    return header


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed, structurally validated manifest (no weights read)."""
    path = Path(directory) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactMissing(f"{path.parent}: no model artifact ({MANIFEST} is missing)") from None
    except OSError as e:  # a directory, a symlink loop, no permission
        raise ManifestError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > _MAX_MANIFEST:
        raise ManifestError(f"{path}: {len(raw)} bytes is too large for a manifest")
    if _looks_pickled(raw[:4]):
        raise PickledContentError(f"{path}: holds pickled data, not JSON")
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    if m.get("format") != FORMAT:
        raise ManifestError(f"{path}: format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {m.get('format_version')!r}; "
                            f"this build reads {FORMAT_VERSION}")
    for key in ("model_id", "classes", "modalities", "architecture", "fusion", "preprocessing",
                "align"):
        if key not in m:
            raise ManifestError(f"{path}: missing key {key!r}")
    arch = m["architecture"]
    if not isinstance(arch, dict) or arch.get("name") != ARCHITECTURE:
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise UnknownArchitectureError(f"{path}: unknown architecture {name!r} "
                                       f"(this build knows {ARCHITECTURE!r})")
    if arch.get("version") != ARCHITECTURE_VERSION:
        raise UnknownArchitectureError(f"{path}: {ARCHITECTURE} version "
                                       f"{arch.get('version')!r} is unknown "
                                       f"(this build knows version {ARCHITECTURE_VERSION})")
    fusion = (arch.get("config", {}).get("fusion") if isinstance(arch.get("config"), dict)
              else None)
    if m["fusion"] not in FUSIONS or fusion != m["fusion"]:
        raise UnknownArchitectureError(f"{path}: unknown fusion {m['fusion']!r} "
                                       f"(expected one of {', '.join(FUSIONS)})")
    if not isinstance(m["align"], dict) or any(not isinstance(m["align"].get(k), int)
                                               for k in ALIGN_KEYS):
        raise ManifestError(f"{path}: align must give integers for {', '.join(ALIGN_KEYS)}")
    return m


def check_align(manifest: Mapping[str, Any], align: Any, *, where: str = "") -> list[str]:
    """Raise :class:`AlignMismatchError` on a content-changing difference; returns warnings."""
    want = manifest["align"]
    have = _align_dict(align)
    for k in ALIGN_CONTENT_KEYS:
        if want[k] != have[k]:
            raise AlignMismatchError(
                f"{where}model was trained with align.{k} = {want[k]} but the config has "
                f"align.{k} = {have[k]}; retrain the model or set the config to match")
    return [f"align.{k}: model trained with {want[k]}, config has {have[k]} (windows appear "
            "at other instants; contents unchanged)"
            for k in ALIGN_KEYS if k not in ALIGN_CONTENT_KEYS and want[k] != have[k]]


def _check_tensors(weights_path: Path, header: Mapping[str, Any], cfg: ModelConfig) -> None:
    """:class:`TensorMismatchError` unless ``header`` holds exactly the model's tensors.

    The model is built on the ``meta`` device (shapes, no storage), so a manifest
    claiming absurd sizes is refused here instead of by the allocator.
    """
    try:
        with torch.device("meta"):
            want = dict(FusionModel(cfg).state_dict())
    except (RuntimeError, OverflowError) as e:  # sizes whose byte count overflows int64
        raise TensorMismatchError(f"{weights_path}: the manifest's model sizes are "
                                  f"impossible ({e})") from None
    missing = sorted(set(want) - set(header))
    unexpected = sorted(set(header) - set(want))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else [])
        raise TensorMismatchError(f"{weights_path}: tensors do not fit {ARCHITECTURE}: "
                                  f"{'; '.join(parts)}")
    for k, t in want.items():
        shape, dtype = list(header[k]["shape"]), _DTYPES[header[k]["dtype"]]
        if shape != list(t.shape) or dtype != t.dtype:
            raise TensorMismatchError(f"{weights_path}: tensor {k!r} is {header[k]['dtype']} "
                                      f"{shape}, the model needs "
                                      f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}")


def load_artifact(directory: str | Path, *, align: Any = None,
                  device: str | torch.device = "cpu") -> LoadedModel:
    """Load and validate an artifact (see module docstring). Raises :class:`ArtifactError`."""
    from safetensors.torch import load as st_load

    d = Path(directory)
    _check_dir(d)
    manifest = read_manifest(d)
    weights_path = d / WEIGHTS
    try:
        data = weights_path.read_bytes()
    except OSError as e:  # replaced by a directory or removed since _check_dir
        raise CorruptWeightsError(f"{weights_path}: cannot be read ({e.strerror or e})") from None
    header = _parse_safetensors(weights_path, data)
    warnings = check_align(manifest, align, where=f"{d}: ") if align is not None else []
    try:
        cfg = ModelConfig.from_dict(manifest["architecture"].get("config", {}))
        prep = Preprocessing.from_dict(manifest["preprocessing"])
    except (ModelConfigError, PreprocessingError) as e:
        raise ManifestError(f"{d / MANIFEST}: {e}") from None
    if list(cfg.classes) != manifest["classes"] \
            or list(cfg.modalities) != manifest["modalities"]:
        raise ManifestError(
            f"{d / MANIFEST}: classes/modalities disagree with the architecture config")
    if cfg.n_mels != prep.n_mels or cfg.text_buckets != prep.text_buckets:
        raise ManifestError(
            f"{d / MANIFEST}: model and preprocessing disagree on n_mels or text_buckets")
    if prep.frames_per_window != manifest["align"]["frames_per_window"]:
        raise ManifestError(f"{d / MANIFEST}: preprocessing.frames_per_window "
                            f"{prep.frames_per_window} != align.frames_per_window "
                            f"{manifest['align']['frames_per_window']}")
    expected_id = model_id(data, manifest)
    if manifest["model_id"] != expected_id:
        raise ModelIdMismatchError(f"{d}: manifest model_id {manifest['model_id']!r} does not "
                                   f"match the content ({expected_id}); the two files come "
                                   "from different saves")
    _check_tensors(weights_path, header, cfg)
    model = FusionModel(cfg)  # only now: every tensor it allocates is backed by the file
    try:
        state = st_load(data)
    except Exception as e:  # safetensors raises its own error types; report, don't guess
        raise CorruptWeightsError(f"{weights_path}: {e}") from None
    model.load_state_dict(state, strict=True)
    if not torch.isfinite(model.temperature) or float(model.temperature) <= 0:
        raise TensorMismatchError(f"{weights_path}: temperature {float(model.temperature)} "
                                  "is not a positive number")
    model.to(device).eval()
    return LoadedModel(model=model, prep=prep, manifest=manifest, model_id=expected_id, path=d,
                       warnings=warnings)
