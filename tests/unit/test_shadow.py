"""The shadow's judge, the promote_if rule, and promote/rollback on disk (no daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamfuse.clock import NS_PER_S as S
from streamfuse.config import (
    AlignConfig,
    BusConfig,
    Config,
    FusionConfig,
    SourceConfig,
    VideoConfig,
)
from streamfuse.fusion import store
from streamfuse.fusion.shadow import Judge, PromoteRule, Verdict
from streamfuse.wire import codec
from tests.helpers.fusion import one_torch_thread, save_tiny  # noqa: F401


def test_judge_agreement_and_accuracy_on_labelled_windows_only():
    j = Judge(period_ns=100 * S)
    j.label("room1", 0, 0, "seven")  # open-ended
    j.label("room1", 4 * S, 0, "", stop=True)
    for k, (live, shadow) in enumerate([("seven", "seven"), ("seven", "one"), ("one", "one")]):
        j.answer("room1", k * S, (k + 1) * S, live, shadow, now_ns=10 * S)
    j.answer("room1", 5 * S, 6 * S, "two", "two", now_ns=10 * S)  # after the stop: unlabelled
    v = j.verdict(now_ns=10 * S)
    assert v == Verdict(
        windows=4, agreement=0.75, labelled=3, live_accuracy=2 / 3, shadow_accuracy=1 / 3
    )
    assert j.verdict(now_ns=200 * S).windows == 0  # the period slid past them


def test_a_label_sent_after_its_windows_still_counts():
    j = Judge(period_ns=100 * S)
    j.answer("room1", 0, S, "seven", "one", now_ns=2 * S)
    assert j.verdict(3 * S).labelled == 0
    j.label("room1", 0, 2 * S, "seven")
    assert (j.verdict(3 * S).live_accuracy, j.verdict(3 * S).shadow_accuracy) == (1.0, 0.0)


def test_promote_rule():
    rule = PromoteRule.parse("accuracy on at least 200 labelled windows beats live by 1 point")
    assert rule == PromoteRule(200, 1.0)
    assert PromoteRule.parse("") is None
    assert rule.met(Verdict(300, 0.9, 200, 0.80, 0.81 + 1e-9))
    assert not rule.met(Verdict(300, 0.9, 199, 0.50, 0.90))  # too few labelled windows
    assert not rule.met(Verdict(300, 0.9, 300, 0.80, 0.805))
    with pytest.raises(ValueError, match="accuracy on at least N"):
        PromoteRule.parse("when it is better")


def _cfg(tmp_path: Path, **fusion) -> Config:
    return Config(fusion=FusionConfig(model=str(tmp_path / "model"), **fusion))


def test_promote_keeps_the_previous_artifact_and_rollback_swaps_back(tmp_path):
    cfg, run = _cfg(tmp_path), tmp_path / "run"
    first = save_tiny(tmp_path / "model", AlignConfig(), seed=0)
    second = save_tiny(tmp_path / "cand", AlignConfig(), seed=1)
    with pytest.raises(store.StoreError, match="no shadow model"):
        store.promote(cfg, run)
    store.set_shadow(cfg, tmp_path / "cand", run)
    assert store.shadow_dir(cfg, run) == (tmp_path / "cand").resolve()
    assert store.promote(cfg, run) == (first, second)
    ids = [
        json.loads((tmp_path / d / "manifest.json").read_text())["model_id"]
        for d in ("model", "model.previous")
    ]
    assert ids == [second, first]
    assert store.shadow_dir(cfg, run) is None  # the promoted shadow is no longer a shadow
    assert store.rollback(cfg) == (second, first)
    assert store.rollback(cfg) == (first, second)  # a second rollback undoes the first


def test_a_shadow_that_does_not_fit_the_config_is_refused(tmp_path):
    run = tmp_path / "run"
    save_tiny(tmp_path / "cand", AlignConfig(window_ms=2000))
    with pytest.raises(store.StoreError, match="window_ms"):
        store.set_shadow(_cfg(tmp_path), tmp_path / "cand", run)
    save_tiny(tmp_path / "av", AlignConfig())  # uses video, audio and text
    video_only = Config(
        fusion=FusionConfig(model=str(tmp_path / "model")),
        sources=[SourceConfig(name="room1", video=VideoConfig())],
    )
    with pytest.raises(store.StoreError, match="audio, text, which no configured source captures"):
        store.set_shadow(video_only, tmp_path / "av", run)
    assert not (run / store.SHADOW_CHOICE).exists()
    with pytest.raises(store.StoreError, match="nothing to roll back"):
        store.rollback(_cfg(tmp_path))


class _Pub:
    """Collects what the shadow publishes."""

    def __init__(self) -> None:
        self.sent: list = []

    def send_multipart(self, parts) -> None:
        self.sent.append(codec.decode([bytes(p) for p in parts]))


def test_the_worker_refuses_a_misfit_shadow_and_publishes_a_good_ones_answers_on_shadow(
    tmp_path, caplog
):
    import numpy as np
    import torch

    from streamfuse.fusion.artifact import load_artifact
    from streamfuse.fusion.batcher import Pending
    from streamfuse.fusion.candidate import ShadowRunner
    from streamfuse.fusion.node import predict, results
    from tests.helpers.fusion import make_window

    save_tiny(tmp_path / "model", AlignConfig(), seed=0)
    save_tiny(tmp_path / "wide", AlignConfig(window_ms=2000))
    run = tmp_path / "run"
    cfg = Config(
        bus=BusConfig(input=f"ipc://{run}/in", output=f"ipc://{run}/out"),
        fusion=FusionConfig(model=str(tmp_path / "model"), shadow=str(tmp_path / "wide")),
    )
    pub = _Pub()
    runner = ShadowRunner(cfg, torch.device("cpu"), pub, None)
    runner.reload(reason="start")
    assert runner.loaded is None
    assert "shadow model (start) not loaded, no shadow runs" in caplog.text
    assert "window_ms" in caplog.text

    cand = save_tiny(tmp_path / "cand", AlignConfig(), seed=3)
    store.set_shadow(cfg, tmp_path / "cand", run)
    runner.reload(reason="SIGHUP")
    assert runner.loaded is not None and runner.loaded.model_id == cand
    live = load_artifact(tmp_path / "model", align=cfg.align)
    rng = np.random.default_rng(0)
    batch = [Pending(make_window(rng, index=i), 0) for i in range(3)]
    probs, mask, _ = predict(live, [p.window for p in batch], torch.device("cpu"))
    answers = results(live, batch, probs, mask, start_ns=0, done_ns=1)
    runner.answer(live, batch, answers)
    assert [m.topic for m in pub.sent] == ["shadow/room1"] * 3
    bodies = [json.loads(m.text()) for m in pub.sent]
    assert {b["model"] for b in bodies} == {cand}
    assert [b["live"]["label"] for b in bodies] == [a.label for a in answers]
    assert [b["t_start_ns"] for b in bodies] == [p.window.t_start_ns for p in batch]
    store.set_shadow(cfg, None, run)  # `streamfuse shadow --off`, over fusion.shadow too
    runner.reload(reason="SIGHUP")
    assert runner.loaded is None and store.shadow_dir(cfg, run) is None
