"""Model artifacts: round trip, content-hash ids, and each rejection with its own error."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from streamfuse.config import AlignConfig
from streamfuse.fusion import artifact as A
from streamfuse.fusion.features import collate, to_device
from tests.helpers.fusion import (
    CLASSES,
    make_window,
    one_torch_thread,  # noqa: F401
    save_tiny,
    tiny_model,
    tiny_prep,
)

ALIGN = AlignConfig()


@pytest.fixture
def art(tmp_path):
    d = tmp_path / "model"
    return d, save_tiny(d, ALIGN, fusion="weighted", seed=3)


@pytest.mark.parametrize("encoder", ["stride", "pool"])
def test_round_trip_gives_the_same_scores(tmp_path, encoder):
    prep = tiny_prep()
    model = tiny_model(prep, "attention", seed=4, encoder=encoder)
    model.set_temperature(1.5)
    mid = A.save_artifact(tmp_path / "m", model, prep, align=ALIGN,
                          extra={"training": {"windows": 10}, "metrics": {"accuracy": 0.5}, "note": "x"})
    loaded = A.load_artifact(tmp_path / "m", align=ALIGN)
    assert loaded.model_id == mid and loaded.prep == prep and loaded.classes == CLASSES
    assert loaded.model.cfg == model.cfg and not loaded.model.training
    m = loaded.manifest
    assert m["format_version"] == A.FORMAT_VERSION and m["fusion"] == "attention"
    assert m["align"] == {k: getattr(ALIGN, k) for k in A.ALIGN_KEYS}
    assert m["training"] == {"windows": 10} and m["metrics"] == {"accuracy": 0.5} and m["extra"] == {"note": "x"}
    assert m["temperature"] == 1.5 and m["streamfuse_version"] and m["created"]
    f = to_device(collate([make_window(np.random.default_rng(0), index=i) for i in range(3)], prep), prep)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model.predict_proba(f), model.predict_proba(f), rtol=0, atol=0)


def test_model_id_is_a_content_hash(tmp_path):
    prep = tiny_prep()
    model = tiny_model(prep, "mean", seed=1)
    a = A.save_artifact(tmp_path / "a", model, prep, align=ALIGN, now_ns=1, extra={"metrics": {"acc": 1}})
    b = A.save_artifact(tmp_path / "b", model, prep, align=ALIGN, now_ns=2, extra={"metrics": {"acc": 2}})
    assert a == b  # time and metrics are not content
    model.set_temperature(2.0)
    assert A.save_artifact(tmp_path / "c", model, prep, align=ALIGN) != a


def test_rejects_pickled_weights(art):
    d, _ = art
    prep = tiny_prep()
    torch.save(tiny_model(prep).state_dict(), d / "model.safetensors")  # a zip of pickles
    with pytest.raises(A.PickledContentError, match="pickled data"):
        A.load_artifact(d)
    (d / "model.safetensors").write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    with pytest.raises(A.PickledContentError, match="pickled data"):
        A.load_artifact(d)


def test_rejects_pickle_files_in_the_directory(art):
    d, _ = art
    (d / "extra_weights.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(A.PickledContentError, match="extra_weights.pt"):
        A.load_artifact(d)


def test_rejects_truncated_weights(art):
    d, _ = art
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(A.CorruptWeightsError, match="truncated"):
        A.load_artifact(d)
    (d / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(A.CorruptWeightsError, match="truncated"):
        A.load_artifact(d)


def test_rejects_a_header_that_is_not_json(art):
    d, _ = art
    data = bytearray((d / "model.safetensors").read_bytes())
    data[8] = ord("#")
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(A.CorruptWeightsError, match="not valid JSON"):
        A.load_artifact(d)


def test_rejects_other_aligner_parameters_naming_both_values(art):
    d, _ = art
    with pytest.raises(A.AlignMismatchError, match=r"align.window_ms = 1000 .* align.window_ms = 2000"):
        A.load_artifact(d, align=dataclasses.replace(ALIGN, window_ms=2000, hop_ms=500))
    with pytest.raises(A.AlignMismatchError, match=r"align.frames_per_window = 4 .* = 8"):
        A.load_artifact(d, align=dataclasses.replace(ALIGN, frames_per_window=8))
    # hop and lateness change when windows appear, not what they hold: a warning
    loaded = A.load_artifact(d, align=dataclasses.replace(ALIGN, hop_ms=250))
    assert loaded.warnings and "align.hop_ms" in loaded.warnings[0]


def _edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def test_rejects_an_unknown_architecture_or_fusion(art):
    d, _ = art
    _edit_manifest(d, lambda m: m["architecture"].update(name="resnet-1000"))
    with pytest.raises(A.UnknownArchitectureError, match="unknown architecture 'resnet-1000'"):
        A.load_artifact(d)
    _edit_manifest(d, lambda m: m["architecture"].update(name=A.ARCHITECTURE, version=99))
    with pytest.raises(A.UnknownArchitectureError, match="version 99"):
        A.load_artifact(d)
    _edit_manifest(d, lambda m: (m["architecture"].update(version=A.ARCHITECTURE_VERSION),
                                 m.update(fusion="telepathy"), m["architecture"]["config"].update(fusion="telepathy")))
    with pytest.raises(A.UnknownArchitectureError, match="unknown fusion 'telepathy'"):
        A.load_artifact(d)


def test_rejects_tensors_that_do_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    save_tiny(d, ALIGN)
    state = load_file(d / "model.safetensors")
    state["head.4.weight"] = torch.zeros(7, 16)
    save_file(state, d / "model.safetensors")
    _edit_manifest(d, lambda m: m.update(model_id=A.model_id((d / "model.safetensors").read_bytes(), m)))
    with pytest.raises(A.TensorMismatchError, match=r"head.4.weight.*\[7, 16\]"):
        A.load_artifact(d)
    del state["head.4.weight"]
    state["bonus"] = torch.zeros(1)
    save_file(state, d / "model.safetensors")
    _edit_manifest(d, lambda m: m.update(model_id=A.model_id((d / "model.safetensors").read_bytes(), m)))
    with pytest.raises(A.TensorMismatchError, match="missing head.4.weight; unexpected bonus"):
        A.load_artifact(d)


def test_rejects_files_from_different_saves(tmp_path):
    d = tmp_path / "m"
    save_tiny(d, ALIGN, seed=1)
    manifest = (d / "manifest.json").read_bytes()
    save_tiny(d, ALIGN, seed=2)
    (d / "manifest.json").write_bytes(manifest)
    with pytest.raises(A.ModelIdMismatchError, match="different saves"):
        A.load_artifact(d)


def test_missing_artifact_and_bad_manifest(tmp_path):
    with pytest.raises(A.ArtifactMissing, match="does not exist"):
        A.load_artifact(tmp_path / "nope")
    d = tmp_path / "m"
    save_tiny(d, ALIGN)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(A.ManifestError, match="not valid JSON"):
        A.load_artifact(d)
    (d / "manifest.json").unlink()
    with pytest.raises(A.ArtifactMissing, match="manifest.json is missing"):
        A.load_artifact(d)
