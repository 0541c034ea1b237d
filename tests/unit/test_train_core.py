"""Pure parts of the trainer: metrics, temperature, modality dropout, splits, feature slicing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamfuse.clock import NS_PER_S
from streamfuse.fusion.features import Features
from streamfuse.train import metrics
from streamfuse.train.dataset import class_order, concat_features, select_features
from streamfuse.train.loop import (
    TrainOptions,
    augment,
    aux_loss,
    class_weights,
    holdout_split,
    modality_dropout,
    occlude_bars,
    subsample_frames,
    train,
)


def test_ece_and_per_class_on_hand_made_predictions():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = torch.tensor([0, 1, 0, 1])
    # bins: 0.9 (2 windows, 50 % right), 0.6 (1, right), 0.8 (1, right)
    expected = (2 / 4) * abs(0.5 - 0.9) + (1 / 4) * abs(1 - 0.6) + (1 / 4) * abs(1 - 0.8)
    assert abs(metrics.ece(probs, y) - expected) < 1e-6
    s = metrics.summary(probs, y, ["a", "b"])
    assert s["accuracy"] == 0.75 and s["confusion"] == [[2, 0], [1, 1]]
    assert s["per_class"]["a"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert abs(s["macro_f1"] - (0.8 + 2 / 3) / 2) < 1e-9


def test_temperature_fixes_overconfidence():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (2000,), generator=gen)
    logits = torch.randn(2000, 5, generator=gen)
    logits[torch.arange(2000), y] += 1.5  # right ~65 % of the time...
    logits *= 4  # ...but far too sure
    t = metrics.fit_temperature(logits, y)
    assert 2.5 < t < 6
    assert metrics.ece(torch.softmax(logits / t, 1), y) < 0.5 * metrics.ece(torch.softmax(logits, 1), y)


def test_modality_dropout_never_empties_a_row():
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(4000, 3, dtype=torch.bool)
    mask[:1000, 2] = False
    mask[1000:1500, 1:] = False  # video only: nothing may be dropped
    out = modality_dropout(mask, gen, p_drop_one=0.3, p_keep_one=0.2, columns=torch.tensor([0, 1, 2]))
    assert not (out & ~mask).any()  # never adds a modality
    assert out.any(dim=1).all()
    assert torch.equal(out[1000:1500], mask[1000:1500])
    changed = (out != mask).any(dim=1).float().mean()
    assert 0.35 < float(changed) < 0.55
    # only the model's own columns are touched
    out2 = modality_dropout(mask, gen, p_drop_one=1.0, p_keep_one=0.0, columns=torch.tensor([0, 1]))
    assert torch.equal(out2[:, 2], mask[:, 2])


def test_class_weights_balance_and_skip_missing_classes():
    y = torch.tensor([0] * 90 + [1] * 10)
    w = class_weights(y, 3)
    assert w[2] == 0 and w[1] > w[0]
    assert abs(float(w[y][:90].sum()) - float(w[y][90:].sum())) < 1e-3  # each class weighs the same


def test_holdout_takes_whole_time_blocks():
    s = NS_PER_S
    keys = [("room1", 1_767_225_600 * s + i * s // 2) for i in range(600)] + \
           [("room2", 1_767_225_600 * s + i * s // 2) for i in range(600)]
    tr, va = holdout_split(keys, 0.15, seed=0)
    assert len(tr) + len(va) == 1200 and not set(tr.tolist()) & set(va.tolist())
    blocks = lambda rows: {(keys[i][0], keys[i][1] // (30 * s)) for i in rows.tolist()}  # noqa: E731
    assert not blocks(tr) & blocks(va)
    assert 0.08 < len(va) / 1200 < 0.25


def _features(n: int, offset: int) -> Features:
    tokens = torch.arange(offset, offset + 2 * n)
    return Features(frames=torch.randn(n, 4, 1, 8, 8), logmel=torch.randn(n, 1, 6, 10), tokens=tokens,
                    offsets=torch.arange(0, 2 * n, 2), mask=torch.ones(n, 3, dtype=torch.bool))


def test_concat_and_select_keep_each_rows_tokens():
    f = concat_features([_features(3, 100), _features(2, 200)])
    assert f.offsets.tolist() == [0, 2, 4, 6, 8]
    sub = select_features(f, torch.tensor([4, 0, 3]))
    assert sub.offsets.tolist() == [0, 2, 4]
    assert sub.tokens.tolist() == [202, 203, 100, 101, 200, 201]
    assert torch.equal(sub.frames[1], f.frames[0])
    aug = augment(sub, torch.Generator().manual_seed(0))
    assert aug.frames.shape == sub.frames.shape and aug.logmel.shape == sub.logmel.shape
    assert torch.equal(aug.tokens, sub.tokens)


def test_class_order():
    assert class_order(["two", "zero", "ten"]) == ["ten", "two", "zero"]
    assert class_order(["nine", "one", "zero"]) == ["zero", "one", "nine"]
    assert class_order(["10", "2", "1"]) == ["1", "2", "10"]


def test_modality_dropout_weights_pick_the_dominant_modality_to_drop():
    gen = torch.Generator().manual_seed(2)
    mask = torch.ones(6000, 3, dtype=torch.bool)
    cols = torch.tensor([0, 1, 2])
    out = modality_dropout(mask, gen, p_drop_one=1.0, p_keep_one=0.0, columns=cols,
                           drop_weights=torch.tensor([4.0, 1.0, 1.0]))
    assert (out.sum(1) == 2).all()  # exactly one dropped per row
    share = (~out).float().mean(0)  # fraction of rows that lost each column
    assert abs(float(share[0]) - 4 / 6) < 0.03 and abs(float(share[1]) - 1 / 6) < 0.03
    # never drops an absent column, never empties a row, "keep one" stays uniform
    mask[:, 0] = False
    out = modality_dropout(mask, gen, p_drop_one=0.5, p_keep_one=0.5, columns=cols,
                           drop_weights=torch.tensor([100.0, 1.0, 1.0]))
    assert not out[:, 0].any() and out.any(dim=1).all()
    # uniform weights give exactly the unweighted draw (same random stream)
    a = modality_dropout(torch.ones(500, 3, dtype=torch.bool), torch.Generator().manual_seed(5), p_drop_one=0.3,
                         p_keep_one=0.2, columns=cols)
    b = modality_dropout(torch.ones(500, 3, dtype=torch.bool), torch.Generator().manual_seed(5), p_drop_one=0.3,
                         p_keep_one=0.2, columns=cols, drop_weights=torch.ones(3))
    assert torch.equal(a, b)


def test_occlude_bars_cover_part_of_the_digit_alike_on_every_frame():
    b, t, h = 64, 4, 32
    frames = torch.ones(b, t, 1, h, h)
    frames[:, :, :, 12:20, 14:18] = -3.0  # dark ink, centred near (16, 16)
    out = occlude_bars(frames, torch.Generator().manual_seed(0), 1.0)
    changed = (out != frames).any(dim=2)  # (B, T, H, W)
    assert all(torch.equal(changed[i, 0], changed[i, k]) for i in range(b) for k in range(t))
    for i in range(b):
        area = int(changed[i, 0].sum())
        assert 0 < area < h * h // 2  # a bar, not the whole view
        bar = out[i, 0, 0][changed[i, 0]]
        assert torch.all(bar == bar[0])  # one level per bar
        ys, xs = changed[i, 0].nonzero(as_tuple=True)
        # it reaches close to the ink's centre (within 0.15 of the size plus half its width)
        d = torch.hypot(ys.float() - 15.5, xs.float() - 15.5).min()
        assert d < 0.15 * h + 0.13 * h + 1
    # share 0.5: about half the windows; share 0: none, and nothing else changes
    some = (occlude_bars(frames, torch.Generator().manual_seed(1), 0.5) != frames).flatten(1).any(1).float().mean()
    assert 0.3 < some < 0.7
    assert torch.equal(occlude_bars(frames, torch.Generator().manual_seed(1), 0.0), frames)


def test_subsample_frames_keeps_k_frames_in_time_order():
    b, t = 5, 4
    frames = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1).expand(b, t, 1, 3, 3).clone()
    f = Features(frames=frames, logmel=torch.zeros(b, 1, 2, 2), tokens=torch.zeros(0, dtype=torch.int64),
                 offsets=torch.zeros(b, dtype=torch.int64), mask=torch.ones(b, 3, dtype=torch.bool))
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        out = subsample_frames(f, 2, gen)
        assert out.frames.shape == (b, 2, 1, 3, 3)
        idx = out.frames[0, :, 0, 0, 0].tolist()
        assert idx == sorted(idx) and len(set(idx)) == 2  # distinct frames, in time order
        assert all(torch.equal(out.frames[r], out.frames[0]) for r in range(b))  # same frames for every row
        seen.add(tuple(idx))
        assert out.logmel is f.logmel and torch.equal(out.mask, f.mask)
    assert len(seen) == 6  # every pair of the 4 frames gets drawn


def test_aux_loss_counts_only_windows_where_the_modality_is_present():
    y = torch.tensor([0, 1, 2, 1])
    good = torch.full((4, 3), -5.0)
    good[torch.arange(4), y] = 5.0
    bad = -good  # confidently wrong
    present = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    # modality "a": rows 0, 1, 3 present and right, row 2 absent and wrong
    la = good.clone()
    la[2] = bad[2]
    la.requires_grad_(True)
    # modality "b": rows 0 and 3 present; the absent rows are wrong
    lb = bad.clone()
    lb[[0, 3]] = good[[0, 3]]
    lb.requires_grad_(True)
    loss = aux_loss({"a": la, "b": lb}, present, y, ("a", "b"))
    expected = F.cross_entropy(good[[0, 1, 3]], y[[0, 1, 3]]) + F.cross_entropy(good[[0, 3]], y[[0, 3]])
    assert abs(float(loss.detach()) - float(expected)) < 1e-6
    loss.backward()
    assert la.grad is not None and lb.grad is not None
    assert not la.grad[2].any() and not lb.grad[[1, 2]].any()  # absent windows get no gradient
    # a modality present nowhere adds nothing
    none = aux_loss({"a": la, "b": lb}, torch.zeros(4, 2, dtype=torch.bool), y, ("a", "b"))
    assert float(none) == 0.0


def test_training_with_aux_heads_saves_an_artifact_the_worker_loads(tmp_path):
    from streamfuse.config import AlignConfig
    from streamfuse.fusion.artifact import load_artifact, save_artifact
    from streamfuse.fusion.features import Preprocessing
    from streamfuse.train.dataset import WindowSet
    from streamfuse.train.loop import TrainOptions, train

    torch.set_num_threads(1)
    prep = Preprocessing.from_align(AlignConfig(), image_size=8, n_mels=6, text_buckets=512)
    gen = torch.Generator().manual_seed(0)
    n = 24
    y = torch.arange(n) % 3
    f = _features(n, 0)
    frames = torch.randn(n, 4, 1, 8, 8, generator=gen) * 0.1
    frames[torch.arange(n), :, :, :, 0] += y.view(n, 1, 1, 1).float()  # a learnable cue
    f = Features(frames=frames, logmel=f.logmel, tokens=f.tokens % 512, offsets=f.offsets, mask=f.mask.clone())
    f.mask[::4, 0] = False  # camera covered in some windows
    ws = WindowSet(f, y, [("room", i) for i in range(n)], ["a", "b", "c"])
    opts = TrainOptions(epochs=2, batch_size=8, image_size=8, n_mels=6, aux_weight=0.5,
                        drop_weights=(3.0, 1.0, 1.0), video_channels=(4,), audio_channels=(4,), embed_dim=8)
    model, result = train(ws, ws, prep, opts, quiet=True)
    assert all(h["aux_loss"] > 0 for h in result["history"])
    save_artifact(tmp_path / "m", model, prep, align=AlignConfig(), extra={"training": {}, "metrics": {}})
    loaded = load_artifact(tmp_path / "m", align=AlignConfig())  # strict: no aux tensors in the file
    assert set(loaded.model.state_dict()) == set(model.state_dict())
    assert not any(k.startswith("aux") for k in model.state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded.model.calibrated_logits(f), model.eval().calibrated_logits(f), atol=1e-5)


def test_early_stopping_waits_for_the_warm_up_to_end():
    """Labels that no input predicts: validation never improves after epoch 1, so patience 1
    would stop at epoch 2; the learning rate rises for ceil(0.25 * 12) = 3 epochs, so training
    runs 3 + 1 = 4 epochs and no fewer."""
    from streamfuse.config import AlignConfig
    from streamfuse.fusion.features import Preprocessing
    from streamfuse.train.dataset import WindowSet

    torch.set_num_threads(1)
    prep = Preprocessing.from_align(AlignConfig(), image_size=8, n_mels=6, text_buckets=512)
    n = 16
    f = _features(n, 0)
    f = Features(frames=torch.zeros(n, 4, 1, 8, 8), logmel=f.logmel, tokens=f.tokens % 512, offsets=f.offsets,
                 mask=f.mask.clone())
    ws = WindowSet(f, torch.arange(n) % 2, [("room", i) for i in range(n)], ["a", "b"])
    opts = TrainOptions(epochs=12, patience=1, batch_size=8, image_size=8, n_mels=6, video_channels=(4,),
                        audio_channels=(4,), embed_dim=8, lr=1e-6)
    _model, result = train(ws, ws, prep, opts, quiet=True)
    assert result["epochs_run"] == 4


class _TableModel(torch.nn.Module):
    """Answers row ``i`` (its frames' first pixel) from ``table[i]``: column 0 when two or more
    modalities are present, else the present one's column (1 video, 2 audio, 3 text); with none
    present it answers class 0, a prior that happens to be right for these rows."""

    def __init__(self, table: list[list[int]]) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.table = torch.tensor(table)
        self.temperature = torch.tensor(1.0)
        self.cfg = SimpleNamespace(classes=("a", "b", "c"), modalities=("video", "audio", "text"))

    def forward(self, f: Features) -> torch.Tensor:
        rows = f.frames[:, 0, 0, 0, 0].long()
        n = f.mask.sum(1)
        col = torch.where(n > 1, 0, 1 + f.mask.float().argmax(1))
        cls = torch.where(n == 0, 0, self.table[rows, col])
        return F.one_hot(cls, 3).float() * 5


def test_any_modality_accuracy_counts_fused_or_a_present_modality_right():
    from streamfuse.train.dataset import WindowSet
    from streamfuse.train.evaluate import evaluate

    f = _features(4, 0)
    f.frames[:, 0, 0, 0, 0] = torch.arange(4).float()
    f.mask[2, 1] = False  # row 2: no audio
    # Every label is class 0. Columns: fused, video alone, audio alone, text alone.
    table = [[0, 1, 1, 1],   # fused right
             [1, 0, 1, 1],   # only video alone right
             [1, 1, 0, 1],   # only audio right, but its audio is absent: not counted
             [1, 2, 2, 2]]   # wrong everywhere
    ws = WindowSet(f, torch.zeros(4, dtype=torch.int64), [("s", i) for i in range(4)], ["a", "b", "c"], {})
    report = evaluate(_TableModel(table), ws)
    assert report["accuracy"] == 0.25
    assert report["accuracy_any_modality"] == 0.5
    assert report["ablation"]["video"]["alone"] == 0.25


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 8, 40])
def test_one_cycle_runs_any_number_of_steps(total: int) -> None:
    """Two epochs of two batches (4 steps) made torch divide by zero in the warm-up."""
    from streamfuse.train.loop import one_cycle

    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    sched = one_cycle(opt, 0.1, total)
    lrs = []
    for _ in range(total):  # as the trainer does: one step per batch
        lrs.append(opt.param_groups[0]["lr"])  # the rate this batch trains with
        opt.step()
        sched.step()
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    if total >= 4:
        assert max(lrs) > lrs[0] and lrs[-1] < max(lrs)  # it rises, then falls
