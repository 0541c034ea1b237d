"""`streamfuse fuse` as a real process: windows PUSHed in (as the aligner does),
classifications out through a real broker to a SUB socket."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamfuse import clock
from streamfuse.wire import codec
from streamfuse.wire.schema import ClassHeader
from tests.helpers.fusion import CLASSES, make_window, save_tiny
from tests.helpers.proc import stop, streamfuse, wait_for

pytestmark = pytest.mark.slow

PAYLOAD_KEYS = {"source", "t_start_ns", "t_end_ns", "label", "scores", "present", "model", "latency_ms"}


class Rig:
    """A bound PUSH (the aligner's end) and a SUB on the broker's output."""

    def __init__(self, cfg) -> None:
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.bind(cfg.align.output)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(cfg.bus.output)
        self.rng = np.random.default_rng(1)
        self.got: list[tuple[ClassHeader, dict]] = []

    def send(self, source: str, index: int, **kw) -> tuple[str, int]:
        w = make_window(self.rng, source=source, index=index, emit_ns=clock.now_ns(), **kw)
        self.push.send_multipart(codec.encode_window(w), copy=False)
        return w.key

    def receive(self, timeout_ms: int = 0) -> int:
        n = 0
        while self.sub.poll(timeout_ms if n == 0 else 0):
            msg = codec.decode(self.sub.recv_multipart())
            assert isinstance(msg.header, ClassHeader)
            self.got.append((msg.header, json.loads(msg.text())))
            n += 1
        return n

    def keys(self, source: str) -> list[tuple[str, int]]:
        return [(h.source, h.t_start_ns) for h, _ in self.got if h.source == source]

    def warm_up(self) -> None:
        """Resend small bursts on source 'warm' until one classification comes back
        (the worker's PUB learns the broker's subscriptions asynchronously)."""
        i = 0

        def answered() -> bool:
            nonlocal i
            for _ in range(8):
                self.send("warm", i)
                i += 1
            self.receive(200)
            return bool(self.keys("warm"))

        wait_for(answered, timeout=60, interval=0, what="a first classification")

    def close(self) -> None:
        self.push.close()
        self.sub.close()
        self.ctx.term()


def _start(broker, tmp_path: Path, fusion: str) -> tuple:
    broker.write(f"[fusion]\n{fusion}\n")
    log = (tmp_path / "fuse.log").open("w")
    proc = streamfuse(["fuse", "--config", str(broker.path)], stderr=log,
                      env={"STREAMFUSE_LOG": "INFO"})
    return proc, log


def test_classifications_schema_and_hot_reload(broker, tmp_path):
    model_dir = Path(broker.cfg.fusion.model)
    old_id = save_tiny(model_dir, broker.cfg.align, seed=1)
    proc, log = _start(broker, tmp_path, "max_batch = 8\nmax_delay_ms = 2\nreload_poll_s = 0.1\nthreads = 1")
    rig = Rig(broker.cfg)
    try:
        rig.warm_up()
        # -- schema: mixed presence, raw and JPEG frames
        sent = []
        for i in range(12):
            sent.append(rig.send("room1", i, video=i % 3 != 0, audio=i % 4 != 1, text=i % 2 == 0, jpeg=i % 5 == 0))
        wait_for(lambda: rig.receive(50) is not None and len(rig.keys("room1")) >= 12, timeout=30,
                 what="12 classifications")
        for h, body in [(h, b) for h, b in rig.got if h.source == "room1"]:
            assert set(body) == PAYLOAD_KEYS
            assert body["model"] == old_id
            assert set(body["scores"]) == set(CLASSES)
            assert abs(sum(body["scores"].values()) - 1) < 1e-4
            assert body["label"] == max(body["scores"], key=body["scores"].get) == h.label
            assert body["t_start_ns"] == h.t_start_ns and body["t_end_ns"] == h.t_ns
            i = body["t_start_ns"] // 500_000_000
            assert body["present"] == {"video": i % 3 != 0, "audio": i % 4 != 1, "text": i % 2 == 0}
            lat = body["latency_ms"]
            assert set(lat) == {"align", "queue", "infer", "total"}
            assert lat["align"] == pytest.approx(1.0)  # make_window closes 1 ms after the end
            assert min(lat.values()) >= 0
            assert lat["total"] == pytest.approx(lat["align"] + lat["queue"] + lat["infer"], abs=0.01)
        assert sorted(rig.keys("room1")) == sorted(sent)

        # -- steady flow: a broken artifact (old model keeps serving), then a new one
        flow: list[tuple[str, int]] = []
        weights = model_dir / "model.safetensors"
        good = weights.read_bytes()
        state = "old"
        new_id = ""
        n = 100
        while state != "done":
            flow.append(rig.send("flow", n))
            n += 1
            rig.receive(5)
            ids = [b["model"] for h, b in rig.got if h.source == "flow"]
            text = (tmp_path / "fuse.log").read_text()
            if state == "old" and len(ids) >= 10:
                weights.write_bytes(good[: len(good) // 2])  # truncated in place
                state = "broken"
            elif state == "broken" and "failed, still serving" in text:
                new_id = save_tiny(model_dir, broker.cfg.align, seed=2)
                state = "new"
            elif state == "new" and new_id in ids[-1:]:
                state = "tail"
                tail_end = n + 20
            elif state == "tail" and n >= tail_end:
                state = "done"
            assert n < 5000, f"stuck in state {state}"
        wait_for(lambda: rig.receive(50) is not None and len(rig.keys("flow")) >= len(flow), timeout=30,
                 what="every flow window answered")
        rig.receive(200)
        keys = rig.keys("flow")
        assert len(keys) == len(set(keys)) == len(flow), "a window was lost or answered twice"
        assert set(keys) == set(flow)
        ids = [b["model"] for h, b in rig.got if h.source == "flow"]
        assert ids[0] == old_id and ids[-1] == new_id != old_id
        switch = ids.index(new_id)
        assert set(ids[:switch]) == {old_id} and set(ids[switch:]) == {new_id}, "models interleaved"
        # SIGHUP with the same artifact: reported unchanged, nothing lost
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "unchanged (SIGHUP)" in (tmp_path / "fuse.log").read_text(), timeout=10,
                 what="SIGHUP reload")
    finally:
        rc = stop(proc, timeout=20)
        rig.close()
        log.close()
    text = (tmp_path / "fuse.log").read_text()
    assert rc == 0, text
    assert "model load (artifact changed on disk) failed, still serving " + old_id in text
    assert "truncated" in text


def test_sigterm_drains_received_windows(broker, tmp_path):
    save_tiny(Path(broker.cfg.fusion.model), broker.cfg.align)
    # A batch goes out only when 8 windows wait (the delay is a minute), so the
    # 5 windows below are answered only by the drain on SIGTERM.
    proc, log = _start(broker, tmp_path, "max_batch = 8\nmax_delay_ms = 60000\nthreads = 1")
    rig = Rig(broker.cfg)
    try:
        rig.warm_up()
        # Warm-up windows go in bursts of max_batch, so they leave no partial batch behind.
        sent = [rig.send("room1", i) for i in range(5)]
        rig.receive(300)
        assert not rig.keys("room1")  # held by the batcher (late warm-up answers may still arrive)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        wait_for(lambda: rig.receive(50) is not None and len(rig.keys("room1")) >= 5, timeout=10,
                 what="the drained classifications")
        assert sorted(rig.keys("room1")) == sorted(sent)
    finally:
        stop(proc)
        rig.close()
        log.close()


def test_starts_without_a_model_and_picks_it_up(broker, tmp_path):
    model_dir = Path(broker.cfg.fusion.model)
    proc, log = _start(broker, tmp_path, "max_batch = 4\nmax_delay_ms = 1\nreload_poll_s = 0.1\nthreads = 1")
    rig = Rig(broker.cfg)
    try:
        wait_for(lambda: "no model loaded" in (tmp_path / "fuse.log").read_text(), timeout=30,
                 what="the no-model notice")
        text = (tmp_path / "fuse.log").read_text()
        assert str(model_dir) in text and text.count("no model loaded") == 1
        for i in range(4):
            rig.send("early", i)
        assert rig.receive(300) == 0  # nothing is published without a model
        assert proc.poll() is None
        model_id = save_tiny(model_dir, broker.cfg.align)
        rig.warm_up()
        assert all(b["model"] == model_id for _, b in rig.got)
        assert not rig.keys("early")
    finally:
        rc = stop(proc, timeout=20)
        rig.close()
        log.close()
    assert rc == 0


def test_aligner_to_worker_to_subscriber(broker, tmp_path):
    """Messages -> broker -> real `streamfuse align` -> real `streamfuse fuse` -> broker -> SUB:
    every window the offline aligner makes from the same messages is classified once."""
    from streamfuse.align.offline import windows_from_messages
    from streamfuse.wire.sockets import connect_pub
    from tests.integration.test_align_node import CONFIG, MS, recording

    broker.write(CONFIG + "[fusion]\nmax_batch = 8\nmax_delay_ms = 2\nthreads = 1\n")
    model_id = save_tiny(Path(broker.cfg.fusion.model), broker.cfg.align)  # 4 kHz model: 16 kHz is resampled
    log = (tmp_path / "fuse.log").open("w")
    procs = [streamfuse(["align", "--config", str(broker.path)]),
             streamfuse(["fuse", "--config", str(broker.path)], stderr=log, env={"STREAMFUSE_LOG": "INFO"})]
    ctx = zmq.Context()
    pub = connect_pub(ctx, broker.cfg.bus)
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(broker.cfg.bus.output)
    got: dict[tuple[str, int], dict] = {}
    answers: list[tuple[str, int]] = []

    def receive(timeout_ms: int) -> None:
        while sub.poll(timeout_ms):
            msg = codec.decode(sub.recv_multipart())
            timeout_ms = 0
            if msg.kind != "class":  # the SUB sees the published capture messages too
                continue
            body = json.loads(msg.text())
            got[(body["source"], body["t_start_ns"])] = body
            answers.append((body["source"], body["t_start_ns"]))

    try:
        seq = [0]

        def warm() -> bool:  # until the chain (subscriptions, model) carries a window end to end
            pub.send_multipart(codec.encode(codec.text_message("warm", seq[0], clock.now_ns(), "hello")))
            seq[0] += 1
            receive(50)
            return any(s == "warm" for s, _ in got)

        wait_for(warm, timeout=60, interval=0, what="a warm-up classification")
        hop = 500 * MS
        t0 = (clock.now_ns() - 10_000 * MS) // hop * hop + 120 * MS
        msgs = recording(t0, 3)
        for m in msgs:
            pub.send_multipart(codec.encode(m), copy=False)
        want = {(w.source, w.t_start_ns): w for w in windows_from_messages(msgs, broker.cfg.align, sources=["r1", "r2"])}
        wait_for(lambda: receive(50) is None and set(want) <= set(got), timeout=30,
                 what=f"{len(want)} classifications")
        receive(300)
    finally:
        codes = [stop(p, timeout=20) for p in procs]
        pub.close(linger=0)
        sub.close()
        ctx.term()
        log.close()
    assert codes == [0, 0]
    mine = [a for a in answers if a[0] in ("r1", "r2")]
    assert len(mine) == len(set(mine)) == len(want), "a window was lost or answered twice"
    for key, w in want.items():
        body = got[key]
        assert body["model"] == model_id and body["t_end_ns"] == w.t_end_ns
        video = w.present["video"] and w.source == "r1"  # r2's "JPEGs" are 8 fake bytes: they don't decode
        assert body["present"] == {"video": video, "audio": w.present["audio"],
                                   "text": w.present.get("text", False) and bool(w.texts)}, key
        assert body["latency_ms"]["align"] >= 0 and set(body["scores"]) == set(CLASSES)
