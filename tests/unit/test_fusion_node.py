"""The worker's logic without sockets or processes: payloads, latency parts, the
model life cycle (none yet, bad reload, new model), the loop's drain."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch
import zmq

from streamfuse.config import Config, ConfigError
from streamfuse.fusion import node
from streamfuse.fusion.batcher import Pending
from streamfuse.wire import codec
from tests.helpers import prom
from tests.helpers.fusion import (
    CLASSES,
    make_window,
    one_torch_thread,  # noqa: F401
    save_tiny,
)


class FakePub:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send_multipart(self, frames) -> None:
        msg = codec.decode(frames)
        self.sent.append((msg.topic, json.loads(msg.text())))


def _cfg(tmp_path, **fusion) -> Config:
    c = Config()
    return dataclasses.replace(c, fusion=dataclasses.replace(c.fusion, model=str(tmp_path / "model"),
                                                             device="cpu", reload_poll_s=0.05, **fusion))


def _batch(n: int, arrived: int = 0, **kw) -> list[Pending]:
    rng = np.random.default_rng(0)
    return [Pending(make_window(rng, index=i, **kw), arrived) for i in range(n)]


def test_payload_and_latency_parts(tmp_path):
    cfg = _cfg(tmp_path)
    save_tiny(tmp_path / "model", cfg.align)
    w = node.Worker(cfg, torch.device("cpu"), FakePub())
    assert w.load(reason="test")
    p = Pending(make_window(np.random.default_rng(0), text=False, emit_ns=0), arrived_ns=0)
    win = dataclasses.replace(p.window, close_ns=p.window.t_end_ns + 3_000_000, emit_ns=p.window.t_end_ns + 5_000_000)
    probs = np.array([[0.2, 0.7, 0.1]], dtype=np.float32)
    mask = np.array([[True, True, False]])
    start = win.emit_ns + 2_000_000
    (r,) = node.results(w.loaded, [Pending(win, win.emit_ns)], probs, mask, start_ns=start, done_ns=start + 4_000_000)
    body = json.loads(r.payload)
    assert body["label"] == r.label == "one" and r.score == pytest.approx(0.7)
    assert list(body["scores"]) == list(CLASSES)
    assert body["present"] == {"video": True, "audio": True, "text": False}
    assert body["latency_ms"] == {"align": 3.0, "queue": 2.0, "infer": 4.0, "total": 9.0}
    assert body["model"] == w.loaded.model_id
    # total == (close - end) + (now - emit): 3 ms + (2 + 4) ms


def test_no_model_drops_counted_then_a_bad_then_a_good_reload(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    pub = FakePub()
    w = node.Worker(cfg, torch.device("cpu"), pub)
    with caplog.at_level("WARNING", logger="streamfuse.fuse"):
        assert not w.load(reason="start")
        w.maybe_reload()  # still nothing: no second notice
    assert sum("no model loaded" in r.message for r in caplog.records) == 1
    w.handle(_batch(3))
    assert pub.sent == [] and w.dropped_no_model == 3

    first = save_tiny(tmp_path / "model", cfg.align, seed=1)
    w.maybe_reload()
    assert w.loaded and w.loaded.model_id == first
    w.handle(_batch(2))
    assert [t for t, _ in pub.sent] == ["class/room1"] * 2

    failed = prom.value("streamfuse_model_reloads_total", outcome="failed")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    w.maybe_reload()
    assert w.loaded.model_id == first
    assert prom.value("streamfuse_model_reloads_total", outcome="failed") == failed + 1
    w.maybe_reload()  # unchanged on disk: not retried, not counted again
    assert prom.value("streamfuse_model_reloads_total", outcome="failed") == failed + 1

    second = save_tiny(tmp_path / "model", cfg.align, seed=2)
    w.maybe_reload()
    assert w.loaded.model_id == second != first
    w.handle(_batch(1))
    assert pub.sent[-1][1]["model"] == second


def test_main_drains_on_stop_with_injected_sockets(tmp_path):
    """In-process: windows queued behind a long max_delay are all answered once stop is set."""
    cfg = _cfg(tmp_path, max_batch=16, max_delay_ms=60_000.0, threads=1)
    save_tiny(tmp_path / "model", cfg.align)
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for s in (push, pull, pub, sub):
        s.linger = 0
    push.bind("inproc://windows")
    pull.connect("inproc://windows")
    pub.bind("inproc://classes")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://classes")  # inproc: connected at once, no slow joiner
    stop = threading.Event()
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(node.main(cfg, pull=pull, pub=pub, stop=stop)))
    try:
        rng = np.random.default_rng(0)
        # Source b's window 0 comes last: its window 1 may still come, so the batcher waits for it.
        for src, i in [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5), ("b", 0)]:
            push.send_multipart(codec.encode_window(make_window(rng, source=src, index=i)))
        t.start()
        assert not sub.poll(300)  # held: 6 < max_batch, the delay is a minute, b's window 1 is missing
        stop.set()
        t.join(30)
        got = []
        while sub.poll(100):
            got.append(codec.decode(sub.recv_multipart()).header.t_start_ns)
        assert rc == [0] and sorted(got) == [i * 500_000_000 for i in range(6)]
    finally:
        stop.set()
        if t.is_alive():
            t.join(30)
        for s in (push, pull, pub, sub):
            s.close()
        ctx.term()


def test_device_and_threads():
    assert node.resolve_device("cpu").type == "cpu"
    assert node.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^fusion.device: 'cuda:0' needs a GPU"):
            node.resolve_device("cuda:0")
    assert node.thread_count(3) == 3 and node.thread_count(3, workers=8) == 3
    assert 1 <= node.thread_count(0) <= 4
    assert node.thread_count(0, workers=1000) == 1
    # one core is left to the rest of the pipeline
    assert [node.thread_count(0, cores=c) for c in (1, 2, 3, 8, 16)] == [1, 1, 2, 4, 4]
    assert node.thread_count(0, workers=2, cores=8) == 3


def test_a_failing_batch_is_dropped_and_counted_not_fatal(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    save_tiny(tmp_path / "model", cfg.align)
    pub = FakePub()
    w = node.Worker(cfg, torch.device("cpu"), pub)
    assert w.load(reason="test")
    dropped = {"node": "fuse", "topic": "window", "reason": "inference_error"}
    before = prom.value("streamfuse_messages_dropped_total", **dropped)

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(node, "predict", boom)
    w.handle(_batch(3))
    assert pub.sent == [] and prom.value("streamfuse_messages_dropped_total", **dropped) == before + 3
    monkeypatch.undo()
    w.handle(_batch(2))
    assert len(pub.sent) == 2


def _histogram(name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of a histogram in the default registry."""
    from prometheus_client import REGISTRY

    count = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0


def test_latency_and_inference_histograms_are_in_seconds(tmp_path):
    cfg = _cfg(tmp_path)
    save_tiny(tmp_path / "model", cfg.align)
    pub = FakePub()
    w = node.Worker(cfg, torch.device("cpu"), pub)
    assert w.load(reason="test")
    lat0 = _histogram("streamfuse_window_latency_seconds", part="total")
    inf0 = _histogram("streamfuse_inference_seconds")
    w.handle(_batch(2))
    lat1 = _histogram("streamfuse_window_latency_seconds", part="total")
    inf1 = _histogram("streamfuse_inference_seconds")
    total_ms = sum(body["latency_ms"]["total"] for _t, body in pub.sent)
    assert total_ms > 0 and lat1[0] - lat0[0] == 2 and inf1[0] - inf0[0] == 1
    assert lat1[1] - lat0[1] == pytest.approx(total_ms / 1000)
    assert 0 < inf1[1] - inf0[1] < 60  # one tiny batch on a CPU: well under a minute, in seconds
