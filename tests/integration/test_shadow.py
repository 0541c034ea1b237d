"""A shadow model in a real daemon: judged on labelled windows, promoted, rolled back.

`streamfuse run` serves a tiny live model on a synthetic room1 (tests/integration/
daemon_fixtures.py). A second tiny model that answers these windows differently becomes
the shadow through `streamfuse shadow DIR`; `streamfuse label room1 L` labels the stream
with the live model's answer, so the shadow is the less accurate one. Then `streamfuse
promote` and `streamfuse rollback`: the classifications name the shadow's id, then the
first id again, and one subscriber sees every window exactly once across both swaps.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from streamfuse.config import AlignConfig
from streamfuse.fusion.artifact import load_artifact
from streamfuse.fusion.node import predict
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import Window
from tests.conftest import BusEnv
from tests.helpers.fusion import save_tiny
from tests.helpers.hostile import free_port
from tests.helpers.proc import run_streamfuse, wait_for
from tests.helpers.prom import scrape, total
from tests.integration.daemon_fixtures import Daemon, Feeder

pytestmark = pytest.mark.slow
HOP_NS = AlignConfig().hop_ms * 1_000_000


class Collector:
    """Every class/room1 and shadow/room1 message, decoded, in arrival order."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        for t in (topics.class_topic("room1"), topics.shadow_topic("room1")):
            self.sub.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sub.connect(endpoint)
        self.got: list[tuple[str, int, dict]] = []
        self.lock = threading.Lock()

    def poll(self) -> None:
        while self.sub.poll(0):
            m = codec.decode(self.sub.recv_multipart())
            with self.lock:
                self.got.append((m.topic, m.header.seq, json.loads(m.text())))

    def of(self, topic: str) -> list[tuple[int, dict]]:
        with self.lock:
            return [(seq, body) for t, seq, body in self.got if t == topic]


def _feed(feeder: Feeder, collector: Collector, stop: threading.Event) -> None:
    while not stop.is_set():
        feeder.step()
        collector.poll()
        stop.wait(0.005)


def _answer(model: Path, feeder: Feeder) -> str:
    """The label ``model`` gives a window of what the Feeder publishes."""
    import cv2

    img = cv2.imdecode(np.frombuffer(feeder.jpeg, np.uint8), cv2.IMREAD_COLOR)
    w = Window(
        source="room1",
        seq=0,
        t_start_ns=0,
        t_end_ns=10**9,
        present={"video": True, "audio": True, "text": False},
        frames=[img] * 4,
        audio=np.tile(feeder.block, (50, 1)),
        samplerate=16000,
        audio_coverage=1.0,
    )
    loaded = load_artifact(model, align=AlignConfig())
    probs, _, _ = predict(loaded, [w], torch.device("cpu"))
    return loaded.classes[int(probs[0].argmax())]


def _weaker_shadow(root: Path, live: Path, feeder: Feeder) -> tuple[Path, str]:
    """A tiny model that answers the Feeder's windows differently from the live one."""
    mine = _answer(live, feeder)
    for seed in range(1, 40):
        d = root / f"cand{seed}"
        model_id = save_tiny(d, AlignConfig(), seed=seed)
        if _answer(d, feeder) != mine:
            return d, model_id
    raise AssertionError("no tiny model answers differently")


def _sf(env: BusEnv, *args: str, timeout: float = 60):
    return run_streamfuse([*args, "--config", str(env.path)], timeout=timeout)


def _models_after(collector: Collector, n: int) -> list[str]:
    return [body["model"] for _, body in collector.of(topics.class_topic("room1"))[n:]]


@contextlib.contextmanager
def _fed_daemon(bus_env: BusEnv, extra: str, ctx: zmq.Context, feeder: Feeder
                ) -> Iterator[tuple[Daemon, Collector]]:
    """A daemon (config + ``extra``), ready, fed by ``feeder`` from a thread, its bus read by
    a Collector. On the way out: the thread stopped, the sockets closed, ``ctx`` terminated,
    and the daemon's exit code checked."""
    daemon = Daemon(bus_env, extra)
    collector = Collector(ctx, bus_env.cfg.bus.output)
    stop = threading.Event()
    thread = threading.Thread(target=_feed, args=(feeder, collector, stop), name="feeder")
    try:
        daemon.wait_ready(120)
        thread.start()
        yield daemon, collector
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        feeder.close()
        collector.sub.close()
        ctx.term()
        assert daemon.close() == 0


@pytest.fixture
def running(bus_env: BusEnv):
    port = free_port()
    ctx = zmq.Context()
    feeder = Feeder(ctx, bus_env.cfg.bus)
    with _fed_daemon(bus_env, f'[metrics]\nlisten = "127.0.0.1:{port}"\n', ctx, feeder) as (daemon, collector):
        yield bus_env, daemon, feeder, collector, port


def test_shadow_judged_promoted_and_rolled_back(running):
    env, daemon, feeder, collector, port = running
    cls, shd = topics.class_topic("room1"), topics.shadow_topic("room1")
    wait_for(lambda: len(collector.of(cls)) >= 3, timeout=120, what="live classifications")
    first_id = collector.of(cls)[0][1]["model"]
    live_label = Counter(b["label"] for _, b in collector.of(cls)).most_common(1)[0][0]
    cand, cand_id = _weaker_shadow(env.root, env.root / "model", feeder)

    r = _sf(env, "shadow", str(cand))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: collector.of(shd), timeout=60, what="shadow answers")
    r = _sf(env, "label", "room1", live_label)
    assert r.returncode == 0, r.stderr

    def judged() -> dict | None:
        m = scrape(port)
        return m if total(m, "streamfuse_judged_windows", kind="labelled") >= 6 else None

    m = wait_for(judged, timeout=90, interval=0.5, what="6 labelled windows judged")
    live_acc = total(m, "streamfuse_labelled_accuracy_ratio", role="live", model_id=first_id)
    shadow_acc = total(m, "streamfuse_labelled_accuracy_ratio", role="shadow", model_id=cand_id)
    assert shadow_acc < live_acc, (shadow_acc, live_acc)
    assert total(m, "streamfuse_shadow_agreement_ratio") < 1.0
    # The shadow's answers never reach class/: they name the candidate and the live answer.
    assert {b["model"] for _, b in collector.of(cls)} == {first_id}
    assert {b["model"] for _, b in collector.of(shd)} == {cand_id}
    assert all(b["live"]["model"] == first_id for _, b in collector.of(shd))

    n = len(collector.of(cls))
    r = _sf(env, "promote")
    assert r.returncode == 0, r.stderr
    wait_for(
        lambda: cand_id in _models_after(collector, n), timeout=60, what="the promoted model's id"
    )
    n = len(collector.of(cls))
    r = _sf(env, "rollback")
    assert r.returncode == 0, r.stderr
    wait_for(
        lambda: _models_after(collector, n)[-3:] == [first_id] * 3,
        timeout=60,
        what="the first model's id again",
    )

    answers = collector.of(cls)
    starts = [b["t_start_ns"] for _, b in answers]
    assert len(set(starts)) == len(starts), "a window was answered twice"
    assert all(b - a == HOP_NS for a, b in zip(starts, starts[1:], strict=False)), (
        "a window was skipped"
    )
    seqs = [s for s, _ in answers]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    models = [b["model"] for _, b in answers]
    assert models[0] == models[-1] == first_id and cand_id in models
    # Each swap happened once: first -> candidate -> first, never back and forth.
    changes = [m for i, m in enumerate(models) if i == 0 or m != models[i - 1]]
    assert changes == [first_id, cand_id, first_id]


def test_bad_labels_promotes_and_shadows_change_nothing(running):
    env, daemon, feeder, collector, port = running
    cls = topics.class_topic("room1")
    wait_for(lambda: collector.of(cls), timeout=120, what="live classifications")
    live = (env.root / "model" / "manifest.json").read_text()
    cases = [
        (("label", "ghost", "seven", "--wait", "1"), "unknown source 'ghost'"),
        (("label", "room1", ""), "the label is empty"),
        (("label", "room1", "x" * 65), "at most 64"),
        (("label", "room1", "seven", "--for", "0"), "--for 0"),
        (("label", "room1"), "give a LABEL, or --stop"),
        (("promote",), "no shadow model to promote"),
        (("rollback",), "nothing to roll back to"),
    ]
    save_tiny(env.root / "wide", AlignConfig(window_ms=2000))
    cases.append((("shadow", str(env.root / "wide")), "align.window_ms"))
    for args, why in cases:
        r = _sf(env, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert why in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert (env.root / "model" / "manifest.json").read_text() == live
    assert not (env.root / "model.previous").exists()
    assert not (env.run_dir / "shadow").exists()
    assert not collector.of(topics.shadow_topic("room1"))


def test_promote_if_promotes_a_better_shadow_by_itself(bus_env: BusEnv):
    """fusion.shadow + promote_if in the config; labels that agree with the shadow."""
    ctx = zmq.Context()
    feeder = Feeder(ctx, bus_env.cfg.bus)
    save_tiny(bus_env.root / "model", AlignConfig())
    cand, cand_id = _weaker_shadow(bus_env.root, bus_env.root / "model", feeder)
    shadow_label = _answer(cand, feeder)
    rule = "accuracy on at least 4 labelled windows beats live by 1 point"
    extra = f'[fusion]\nshadow = "{cand}"\npromote_if = "{rule}"\n'
    with _fed_daemon(bus_env, extra, ctx, feeder) as (daemon, collector):
        wait_for(
            lambda: collector.of(topics.shadow_topic("room1")), timeout=120, what="shadow answers"
        )
        r = _sf(bus_env, "label", "room1", shadow_label)
        assert r.returncode == 0, r.stderr
        cls = topics.class_topic("room1")
        wait_for(
            lambda: _models_after(collector, 0)[-1:] == [cand_id],
            timeout=90,
            what="the shadow promoted by promote_if",
        )
    log = daemon.log.read_text()
    assert f"promote_if ({rule}) met: shadow {cand_id}" in log
    assert json.loads((bus_env.root / "model" / "manifest.json").read_text())["model_id"] == cand_id
    assert (bus_env.root / "model.previous" / "manifest.json").exists()
    starts = [b["t_start_ns"] for _, b in collector.of(cls)]
    assert len(set(starts)) == len(starts)
    assert all(b - a == HOP_NS for a, b in zip(starts, starts[1:], strict=False))
