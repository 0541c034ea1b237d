"""Batch consistency: a window's scores do not depend on the batch it is in
(pytorch/audio's batch_consistency_test, applied to the whole fusion path).

Tolerance: absolute 1e-5 on calibrated probabilities (float32 on CPU; batched
convolutions may sum in another order, which moves the last bits only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse.fusion.features import collate, to_device
from streamfuse.fusion.model import FUSIONS
from tests.helpers.fusion import SAMPLE_RATE, make_window, one_torch_thread, tiny_model, tiny_prep  # noqa: F401

ATOL = 1e-5
PREP = tiny_prep()
ENCODERS = ("stride", "pool")
MODELS = {(f, e): tiny_model(PREP, f, seed=i, encoder=e) for i, f in enumerate(FUSIONS) for e in ENCODERS}
for i, m in enumerate(MODELS.values()):
    m.set_temperature(0.7 + 0.3 * i)
    for mod in m.modules():  # "pool" has BatchNorm: give it running statistics that are not 0/1
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)

presence = st.tuples(st.booleans(), st.booleans(), st.booleans())
window_spec = st.fixed_dictionaries({
    "present": presence,
    "jpeg": st.booleans(),
    "rate": st.sampled_from([SAMPLE_RATE, SAMPLE_RATE, 2 * SAMPLE_RATE]),
    "label": st.none() | st.integers(0, 2),
})


def _windows(specs, seed):
    rng = np.random.default_rng(seed)
    return [make_window(rng, index=i, video=s["present"][0], audio=s["present"][1], text=s["present"][2],
                        jpeg=s["jpeg"], samplerate=s["rate"], label=s["label"]) for i, s in enumerate(specs)]


def _probs(model, windows):
    with torch.inference_mode():
        return model.predict_proba(to_device(collate(windows, PREP), PREP))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(window_spec, min_size=1, max_size=7), seed=st.integers(0, 2**16),
       fusion=st.sampled_from(FUSIONS), encoder=st.sampled_from(ENCODERS))
def test_batch_equals_each_window_alone(specs, seed, fusion, encoder):
    model = MODELS[fusion, encoder]
    windows = _windows(specs, seed)
    batched = _probs(model, windows)
    alone = torch.cat([_probs(model, [w]) for w in windows])
    assert batched.shape == (len(windows), 3)
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)


@settings(max_examples=15, deadline=None)
@given(specs=st.lists(window_spec, min_size=2, max_size=6), seed=st.integers(0, 2**16),
       fusion=st.sampled_from(FUSIONS), encoder=st.sampled_from(ENCODERS), data=st.data())
def test_batch_order_does_not_matter(specs, seed, fusion, encoder, data):
    model = MODELS[fusion, encoder]
    windows = _windows(specs, seed)
    perm = data.draw(st.permutations(range(len(windows))))
    a = _probs(model, windows)
    b = _probs(model, [windows[i] for i in perm])
    torch.testing.assert_close(a[list(perm)], b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_probabilities_are_distributions(fusion, encoder):
    windows = _windows([{"present": (bool(i & 1), bool(i & 2), bool(i & 4)), "jpeg": False, "rate": SAMPLE_RATE, "label": None}
                        for i in range(8)], seed=0)
    p = _probs(MODELS[fusion, encoder], windows)
    assert torch.isfinite(p).all() and torch.all(p >= 0)
    torch.testing.assert_close(p.sum(1), torch.ones(8))
