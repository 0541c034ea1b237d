"""Hostile model artifacts: every one is refused with an ArtifactError, nothing else escapes,
and nothing is allocated from the manifest's sizes before the weights file backs them."""

from __future__ import annotations

import json
import struct

import pytest

from streamfuse.config import AlignConfig
from streamfuse.fusion import artifact as A
from tests.helpers.fusion import one_torch_thread, save_tiny  # noqa: F401

ALIGN = AlignConfig()


@pytest.fixture
def art(tmp_path):
    d = tmp_path / "model"
    save_tiny(d, ALIGN, seed=3)
    return d


def _rewrite_header(d, fn):
    """Edit the safetensors JSON header of ``d`` in place (same data bytes)."""
    data = (d / A.WEIGHTS).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    fn(header)
    raw = json.dumps(header).encode()
    (d / A.WEIGHTS).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _first(header):
    return next(v for k, v in header.items() if k != "__metadata__")


@pytest.mark.parametrize("edit", [
    lambda e: e.update(data_offsets=["0", "4"]),
    lambda e: e.update(data_offsets=[0, None]),
    lambda e: e.update(shape=7),
    lambda e: e.update(shape=["x"]),
    lambda e: e.update(shape=[None]),
    lambda e: e.update(shape=[{"a": 1}]),
    lambda e: e.update(dtype=["F32"]),
    lambda e: e.update(dtype={"F32": 1}),
    lambda e: e.update(data_offsets={"a": 1, "b": 2}),
    lambda e: e.update(shape=[2.5]),
], ids=["offsets-str", "offsets-none", "shape-int", "shape-str", "shape-none", "shape-dict",
        "dtype-list", "dtype-dict", "offsets-dict", "shape-float"])
def test_malformed_header_entries_are_corrupt_weights(art, edit):
    _rewrite_header(art, lambda h: edit(_first(h)))
    with pytest.raises(A.CorruptWeightsError, match="malformed header entry|byte range"):
        A.load_artifact(art)


def test_header_length_claiming_gigabytes(art):
    data = (art / A.WEIGHTS).read_bytes()
    (art / A.WEIGHTS).write_bytes(struct.pack("<Q", 8 << 30) + data[8:])
    with pytest.raises(A.CorruptWeightsError, match="implausible"):
        A.load_artifact(art)


def test_symlink_loop_and_directory_instead_of_a_file(art):
    (art / A.WEIGHTS).unlink()
    (art / A.WEIGHTS).symlink_to(art / A.WEIGHTS)
    with pytest.raises(A.ArtifactMissing):
        A.load_artifact(art)
    (art / A.WEIGHTS).unlink()
    (art / A.WEIGHTS).mkdir()
    with pytest.raises(A.ArtifactMissing):
        A.load_artifact(art)


def _absurd(d, **cfg):
    def fn(m):
        m["architecture"]["config"].update(cfg)
        if "text_buckets" in cfg:
            m["preprocessing"]["text_buckets"] = cfg["text_buckets"]
        m["model_id"] = A.model_id((d / A.WEIGHTS).read_bytes(), m)
    m = json.loads((d / A.MANIFEST).read_text())
    fn(m)
    (d / A.MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("cfg", [
    {"text_buckets": 1 << 44},                  # a 4 PiB embedding table
    {"embed_dim": 1 << 40},
    {"video_channels": [1 << 30, 1 << 30]},
])
def test_absurd_sizes_are_refused_before_anything_is_allocated(art, cfg):
    """The weights file does not hold such tensors: a TensorMismatchError naming one,
    not a RuntimeError from the allocator (or the OOM killer)."""
    _absurd(art, **cfg)
    with pytest.raises(A.ArtifactError):
        A.load_artifact(art)


@pytest.mark.parametrize("cfg", [{"embed_dim": -4}, {"video_channels": [-1]},
                                 {"classes": ["a"] * 3}, {"dropout": "x"}, {"n_mels": 1.5}])
def test_invalid_sizes_are_manifest_errors(art, cfg):
    _absurd(art, **cfg)
    with pytest.raises(A.ManifestError):
        A.load_artifact(art)


def test_unreadable_files_are_artifact_errors(art):
    """read_manifest is called alone (model listings): a directory or a loop there is an
    ArtifactError like a missing file, not an OSError out of the caller."""
    (art / A.MANIFEST).unlink()
    (art / A.MANIFEST).mkdir()
    with pytest.raises(A.ArtifactError):
        A.read_manifest(art)
    (art / A.MANIFEST).rmdir()
    (art / A.MANIFEST).symlink_to(art / A.MANIFEST)
    with pytest.raises(A.ArtifactError):
        A.read_manifest(art)
