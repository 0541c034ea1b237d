"""The fusion model: learning, masking semantics, calibration, and (with CUDA) device and AMP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamfuse.fusion.features import Features, collate, to_device
from streamfuse.fusion.model import (
    FUSIONS,
    FusionModel,
    ModelConfig,
    ModelConfigError,
    masked_softmax,
)
from tests.helpers.fusion import CLASSES, make_window, one_torch_thread, tiny_model, tiny_prep  # noqa: F401

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def prep():
    return tiny_prep()


def _dataset(prep, n: int, carrier: str, seed: int):
    """Windows whose label only ``carrier`` reveals; every modality present."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    ws = [make_window(rng, index=i, label=int(y), cues=(carrier,)) for i, y in enumerate(labels)]
    return to_device(collate(ws, prep), prep), torch.as_tensor(labels)


def _rows(f: Features, idx: torch.Tensor) -> Features:
    """Rows of a Features batch (test-only helper: gathers the token bags too)."""
    ends = torch.cat([f.offsets[1:], torch.tensor([f.tokens.numel()])])
    parts = [f.tokens[f.offsets[i]:ends[i]] for i in idx.tolist()]
    lens = torch.tensor([p.numel() for p in parts])
    return Features(frames=f.frames[idx], logmel=f.logmel[idx], tokens=torch.cat(parts),
                    offsets=torch.cumsum(lens, 0) - lens, mask=f.mask[idx])


# Each strategy gets a different modality carrying the label (all are present).
CARRIER = {"concat": "video", "mean": "audio", "weighted": "text", "attention": "video"}


@pytest.mark.slow
@pytest.mark.parametrize("fusion,encoder", [(f, "stride") for f in FUSIONS]
                         + [("attention", "pool"), ("mean", "pool"), ("attention", "pool_first")])
def test_each_fusion_learns_a_tiny_problem(prep, fusion, encoder):
    torch.manual_seed(0)
    train, y = _dataset(prep, 96, CARRIER[fusion], seed=1)
    test, y_test = _dataset(prep, 48, CARRIER[fusion], seed=2)
    model = tiny_model(prep, fusion, encoder=encoder).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randperm(96, generator=gen)[:32]
        loss = torch.nn.functional.cross_entropy(model(_rows(train, idx)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        acc = (model.predict_proba(test).argmax(1) == y_test).float().mean().item()
    assert acc >= 0.9, f"{fusion}/{encoder} reached only {acc:.2f} (chance is {1 / len(CLASSES):.2f})"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_absent_modality_contributes_nothing(prep, fusion):
    """Whatever an absent modality's tensors hold, the output is the same."""
    model = tiny_model(prep, fusion)
    rng = np.random.default_rng(0)
    a = to_device(collate([make_window(rng, index=i) for i in range(3)], prep), prep)
    b = to_device(collate([make_window(rng, index=i) for i in range(3)], prep), prep)  # other content
    mask = torch.tensor([[False, True, True], [False, True, True], [False, True, True]])
    # b: same audio and text as a, different video, video marked absent in both
    b.logmel, b.tokens, b.offsets = a.logmel, a.tokens, a.offsets
    with torch.inference_mode():
        pa = model.predict_proba(a.with_mask(mask))
        pb = model.predict_proba(b.with_mask(mask))
        pv = model.predict_proba(b)  # video present: it matters
    torch.testing.assert_close(pa, pb)
    assert not torch.allclose(pa, pv)
    if fusion != "concat":
        emb = model.encode(a)
        w = model.fusion_weights(emb, model.model_mask(a.with_mask(mask)))
        assert torch.all(w[:, 0] == 0) and torch.allclose(w.sum(1), torch.ones(3))


def test_nothing_present_gives_finite_scores(prep):
    for fusion in FUSIONS:
        model = tiny_model(prep, fusion)
        f = to_device(collate([make_window(np.random.default_rng(0), video=False, audio=False, text=False)], prep), prep)
        with torch.inference_mode():
            p = model.predict_proba(f)
        assert torch.isfinite(p).all() and torch.allclose(p.sum(1), torch.ones(1))


def test_masked_softmax():
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    m = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    w = masked_softmax(s, m)
    assert w[1, 1] == 0 and torch.all(w[2] == 0)
    torch.testing.assert_close(w[1, [0, 2]], torch.softmax(torch.tensor([1.0, 3.0]), 0))


def test_model_with_a_subset_of_modalities_ignores_the_others(prep):
    model = tiny_model(prep, "mean", modalities=("audio",))
    assert list(model.encoders) == ["audio"]
    rng = np.random.default_rng(0)
    f = to_device(collate([make_window(rng)], prep), prep)
    with torch.inference_mode():
        p1 = model.predict_proba(f)
        p2 = model.predict_proba(f.with_mask(torch.tensor([[False, True, False]])))
    torch.testing.assert_close(p1, p2)


def test_temperature_scales_logits_and_is_saved(prep):
    model = tiny_model(prep, "weighted")
    f = to_device(collate([make_window(np.random.default_rng(0))], prep), prep)
    with torch.inference_mode():
        logits = model(f)
        model.set_temperature(2.5)
        torch.testing.assert_close(model.calibrated_logits(f), logits / 2.5)
    assert float(model.state_dict()["temperature"]) == 2.5
    with pytest.raises(ValueError):
        model.set_temperature(0)


def test_model_config_validation(prep):
    with pytest.raises(ModelConfigError, match="model.fusion"):
        ModelConfig.for_preprocessing(CLASSES, prep, fusion="magic")
    with pytest.raises(ModelConfigError, match="model.modalities"):
        ModelConfig.for_preprocessing(CLASSES, prep, modalities=("smell",))
    with pytest.raises(ModelConfigError, match="model.classes"):
        ModelConfig(classes=("a",))
    cfg = ModelConfig.for_preprocessing(CLASSES, prep, modalities=("text", "video"))
    assert cfg.modalities == ("video", "text")  # canonical order
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelConfigError, match="model.video_stem"):
        ModelConfig.for_preprocessing(CLASSES, prep, video_stem=-1, encoder="pool")
    with pytest.raises(ModelConfigError, match="model.video_stem"):
        ModelConfig.for_preprocessing(CLASSES, prep, video_stem=8, encoder="stride")
    stem = ModelConfig.for_preprocessing(CLASSES, prep, video_stem=8, encoder="pool_first")
    assert ModelConfig.from_dict(stem.to_dict()) == stem


def test_configs_saved_before_video_stem_build_the_same_model(prep):
    """Manifests written before ``video_stem`` existed have no such key: they must build the
    model they were saved from (the worker loads its state dict strictly)."""
    cfg = ModelConfig.for_preprocessing(CLASSES, prep, encoder="pool", video_channels=(4, 8), embed_dim=16)
    old = {k: v for k, v in cfg.to_dict().items() if k != "video_stem"}
    rebuilt = ModelConfig.from_dict(old)
    assert rebuilt.video_stem == 0
    torch.manual_seed(0)
    saved = FusionModel(cfg).state_dict()
    FusionModel(rebuilt).load_state_dict(saved, strict=True)


@pytest.mark.parametrize("encoder,stem", [("pool", 6), ("pool_first", 0), ("pool_first", 6)])
def test_video_stem_and_pool_first_shapes_and_batch_independence(prep, encoder, stem):
    """A stride-2 stem and the pool-first stack give (B, D) embeddings; in eval mode a
    window's scores do not depend on the rest of its batch (BatchNorm's running statistics)."""
    torch.manual_seed(0)
    cfg = ModelConfig.for_preprocessing(CLASSES, prep, encoder=encoder, video_stem=stem, embed_dim=16,
                                        video_channels=(4, 8), audio_channels=(4, 8))
    model = FusionModel(cfg)
    if stem:
        first = model.encoders["video"].cnn[0]
        assert first.out_channels == stem and first.stride == (2, 2)
    feats, _ = _dataset(prep, 6, "video", seed=3)
    model.train()
    model(feats).sum().backward()  # one step of BatchNorm statistics
    model.eval()
    with torch.inference_mode():
        emb = model.encode(feats)
        assert emb["video"].shape == (6, 16)
        whole = model(feats)
        alone = model(_rows(feats, torch.tensor([2])))
    torch.testing.assert_close(whole[2:3], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_mixed_precision_with_absent_modalities_cpu_autocast(prep, fusion):
    """The AMP path (bf16 encoders beside float32 zeros for absent rows) on CPU autocast,
    so CI covers the dtype mixing the CUDA worker relies on."""
    model = tiny_model(prep, fusion)
    rng = np.random.default_rng(0)
    for ws in ([make_window(rng, index=i, video=i % 2 == 0, text=i % 3 == 0) for i in range(6)],
               [make_window(rng, index=i, video=False) for i in range(3)],
               [make_window(rng, video=False, audio=False, text=False)]):
        f = to_device(collate(ws, prep), prep)
        with torch.inference_mode():
            ref = model.predict_proba(f)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                p = model.predict_proba(f)
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        assert (p - ref).abs().max() < 2e-2


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("fusion", FUSIONS)
def test_cuda_placement_and_mixed_precision(prep, fusion):
    from streamfuse.fusion.node import _autocast

    dev = torch.device("cuda")
    model = tiny_model(prep, fusion).to(dev)
    rng = np.random.default_rng(0)
    ws = [make_window(rng, index=i, video=i % 2 == 0, text=i % 3 == 0) for i in range(6)]
    raw = collate(ws, prep)
    f = to_device(raw, prep, dev)
    assert all(t.device.type == "cuda" for t in (f.frames, f.logmel, f.tokens, f.offsets, f.mask))
    with torch.inference_mode():
        ref = model.predict_proba(f)
        with _autocast(dev):
            amp = model.predict_proba(f)
            assert model(f).dtype in (torch.float16, torch.bfloat16)
    assert amp.dtype == torch.float32 and torch.isfinite(amp).all()
    assert (amp - ref).abs().max() < 2e-2  # half precision on a tiny random model
    cpu = tiny_model(prep, fusion)
    with torch.inference_mode():
        torch.testing.assert_close(cpu.predict_proba(to_device(raw, prep)), ref.cpu(), atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@cuda
def test_cuda_resampling_on_device(prep):
    import dataclasses

    w = make_window(np.random.default_rng(0))
    w = dataclasses.replace(w, audio=np.repeat(w.audio, 2, axis=0), samplerate=2 * w.samplerate)
    f = to_device(collate([w], prep), prep, "cuda")
    assert f.logmel.device.type == "cuda" and torch.isfinite(f.logmel).all()
