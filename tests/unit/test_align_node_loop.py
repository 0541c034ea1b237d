"""The node loop with injected sockets (inproc): arrival, timer, bad input, stop."""

from __future__ import annotations

import threading

import numpy as np

from streamfuse import clock
from streamfuse.align import node
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.config import parse
from streamfuse.wire import codec
from tests.helpers import prom
from tests.helpers.inproc import align_sockets
from tests.helpers.proc import wait_for


def test_main_with_injected_sockets() -> None:
    cfg = parse({"sources": [{"name": "r1", "audio": {"samplerate": 16000}}],
                 "align": {"required": ["audio"]}}, environ={})
    ctx, pub, sub, push, pull = align_sockets(cfg)
    stop = threading.Event()
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(node.main(cfg, sub=sub, push=push, stop=stop)))
    before = prom.value("streamfuse_messages_dropped_total", node="align", topic="r1/audio", reason="header")
    gaps_before = prom.value("streamfuse_seq_gap_messages_total", node="align", topic="r1/audio")
    t.start()
    try:
        # Two seconds of audio in the past, sent at once; plus garbage and another source.
        t0 = (clock.now_ns() - 10_000 * MS) // (500 * MS) * (500 * MS)
        msgs = [codec.audio_message("r1", i, t0 + i * 20 * MS, np.full((320, 1), i, np.float32), 16000)
                for i in range(100)]
        got = []

        def deliver() -> bool:
            for m in msgs:
                pub.send_multipart(codec.encode(m))
            pub.send_multipart([b"r1/audio", b"\xc1", b"x"])  # not MessagePack
            # 400 blocks lost on the way (seq 99 -> 500), a silence in the audio
            pub.send_multipart(codec.encode(codec.audio_message("r1", 500, t0 + 2200 * MS,
                                                                np.zeros((320, 1), np.float32), 16000)))
            pub.send_multipart(codec.encode(codec.text_message("r9", 0, t0, "not configured")))
            while pull.poll(300):
                got.append(codec.decode_window(pull.recv_multipart()))
            return bool(got)

        wait_for(deliver, timeout=10, what="windows from the node")
        # The last windows close on the lateness bound, i.e. on the node's timer.
        def tail() -> bool:
            while pull.poll(100):
                got.append(codec.decode_window(pull.recv_multipart()))
            return any(w.t_start_ns >= t0 + 1500 * MS for w in got)

        wait_for(tail, timeout=10, what="the timer-closed windows")
    finally:
        stop.set()
        t.join(5)
        for s in (pub, sub, push, pull):
            s.close()
        ctx.term()
    assert rc == [0]
    assert {w.source for w in got} == {"r1"}
    full = [w for w in got if w.audio_coverage == 1.0]
    assert full and all(w.audio.shape == (16000, 1) and w.emit_ns > 0 for w in full)
    after = prom.value("streamfuse_messages_dropped_total", node="align", topic="r1/audio", reason="header")
    assert after > before  # the garbage was counted (metrics flushed at exit)
    assert prom.value("streamfuse_seq_gap_messages_total", node="align", topic="r1/audio") - gaps_before >= 400
