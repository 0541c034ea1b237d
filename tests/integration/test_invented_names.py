"""A publisher that invents a source name per message: the aligner node (real ZeroMQ
sockets, in-process) and the fusion worker (a real tiny model) keep their counters,
metric labels and seq tables bounded, the real sources keep their own exact counts, and
what goes on the wire keeps every name."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import torch
import zmq

from streamfuse import clock
from streamfuse.align import node as align_node
from streamfuse.config import parse
from streamfuse.fusion import node as fuse_node
from streamfuse.fusion.batcher import Pending
from streamfuse.names import MAX_NAMES, OTHER
from streamfuse.wire import codec, topics
from tests.helpers import prom
from tests.helpers.fusion import make_window, one_torch_thread, save_tiny  # noqa: F401
from tests.helpers.inproc import align_sockets
from tests.helpers.proc import wait_for

N = 3000  # invented names, each one text message (one window each)
BAD = 200  # undecodable messages on invented topics, after the cap is full
ALIGN_FAMILIES = ("streamfuse_windows_total", "streamfuse_windows_absent_total",
                  "streamfuse_late_total", "streamfuse_resyncs_total",
                  "streamfuse_audio_coverage_ratio_count")
FUSE_FAMILIES = ("streamfuse_classifications_total", "streamfuse_shadow_classifications_total")


def _label_values(samples: prom.Samples, label: str, names: tuple[str, ...] | None = None,
                  **match: str) -> set[str]:
    """The values of ``label`` in the samples called one of ``names`` matching ``match``."""
    out = set()
    for (name, labels), _ in samples.items():
        lab = dict(labels)
        if (names is None or name in names) and label in lab \
                and all(lab.get(k) == v for k, v in match.items()):
            out.add(lab[label])
    return out


def _sources_of(topic_labels: set[str]) -> set[str]:
    return {topics.split(t)[0] for t in topic_labels if t != "?"}


def _publish(xpub: zmq.Socket) -> int:
    """The flood: a real source ("early") talking throughout, with 5 messages lost on the
    way, N invented names, then BAD undecodable messages. Returns early's message count."""
    early = 0
    seq = 0
    for i in range(N):
        if i % 100 == 0:
            seq += 6 if i == 1500 else 1  # seq 15 -> 21: 5 lost
            xpub.send_multipart(codec.encode(codec.text_message("early", seq, clock.now_ns(),
                                                                f"early {i}")))
            early += 1
        xpub.send_multipart(codec.encode(codec.text_message(f"inv-{i}", 0, clock.now_ns(), "hi")))
    for i in range(BAD):
        xpub.send_multipart([f"bad-{i}/text".encode(), b"\xc1", b"x"])  # header not MessagePack
    return early


def test_the_aligner_node_bounds_invented_names() -> None:
    cfg = parse({"align": {"required": [], "window_ms": 500, "hop_ms": 500, "max_lateness_ms": 0,
                           "text_context_ms": 500}}, environ={})
    al = align_node.make_aligner(cfg)  # no [[sources]]: every name is aligned
    counts = align_node._Counts(al)
    # Nothing dropped on the way: every window must arrive.
    ctx, xpub, sub, push, pull = align_sockets(cfg, pub_type=zmq.XPUB, lossless=True)
    before = prom.local()
    stop = threading.Event()
    t = threading.Thread(target=align_node._loop, args=(sub, push, al, counts),
                         kwargs={"max_bytes": 1 << 20, "stop": stop})
    t.start()
    got: dict[str, int] = {}
    try:
        assert xpub.poll(5000) and xpub.recv() == b"\x01"  # subscribed: nothing is lost
        early = _publish(xpub)

        def all_windows() -> bool:
            while pull.poll(50):
                w = codec.decode_window(pull.recv_multipart())
                got[w.source] = got.get(w.source, 0) + 1
            return len(got) == N + 1

        wait_for(all_windows, timeout=20, what="a window of every source")
    finally:
        stop.set()
        t.join(5)
        counts.flush(clock.now_ns())
        for s in (xpub, sub, push, pull):
            s.close()
        ctx.term()
    # The wire keeps every name, folded or not.
    assert set(got) == {"early"} | {f"inv-{i}" for i in range(N)}
    after = prom.local()

    def delta(name: str, **labels: str) -> float:
        return prom.total(after, name, **labels) - prom.total(before, name, **labels)

    # Prometheus: the new source label values are the cap plus "_other".
    new = (_label_values(after, "source", ALIGN_FAMILIES)
           - _label_values(before, "source", ALIGN_FAMILIES))
    own = {"early"} | {f"inv-{i}" for i in range(MAX_NAMES - 1)}
    assert new == own | {OTHER}
    new_topics = (_label_values(after, "topic", node="align")
                  - _label_values(before, "topic", node="align"))
    assert _sources_of(new_topics) <= own | {OTHER}
    # The real source's counts are its own and exact; the flood is counted under _other.
    assert delta("streamfuse_windows_total", source="early") == got["early"]
    assert delta("streamfuse_messages_in_total", node="align", topic="early/text") == early
    assert delta("streamfuse_seq_gap_messages_total", node="align", topic="early/text") == 5
    assert delta("streamfuse_windows_total", source=OTHER) == N - (MAX_NAMES - 1)
    assert delta("streamfuse_messages_in_total", node="align", topic="_other/text") \
        == N - (MAX_NAMES - 1)
    assert delta("streamfuse_messages_dropped_total", node="align", topic="_other/text",
                 reason="header") == BAD
    assert delta("streamfuse_source_names_folded_total", node="align") >= N - MAX_NAMES + BAD
    # The node's and the aligner's tables: at most the cap plus _other.
    for c in (counts.messages_in, counts.sent, counts.unsent, counts.gaps, counts.resets):
        assert len(_sources_of(set(c))) <= MAX_NAMES + 1
    assert len(_sources_of({topic for topic, _ in counts.decode_errors})) <= MAX_NAMES + 1
    assert len(counts._windows) <= MAX_NAMES + 1
    st = al.stats
    for table in (st.windows, st.coverage_n, st.repeated, st.resyncs):
        assert len(table) <= MAX_NAMES + 1
    for pairs in (st.absent, st.late, st.rejected, st.restarts):
        assert len({k[0] for k in pairs}) <= MAX_NAMES + 1
    assert len(counts.last_seq) <= align_node.SEQ_TOPICS_MAX
    assert counts.last_seq["early/text"] == early + 5  # kept: it talks throughout


class _Pub:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []

    def send_multipart(self, frames) -> None:  # type: ignore[no-untyped-def]
        h = codec.decode(frames).header
        self.sent.append((codec.decode(frames).topic, h.source, h.seq))


def test_the_fusion_worker_bounds_invented_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Windows of N invented names (after the cap is full, a configured source's first
    window comes): labels fold, the configured source keeps its own, seq stays bounded,
    every classification keeps its window's name."""
    cfg = parse({"sources": [{"name": "cam1", "text": {"input": "zmq"}}],
                 "fusion": {"model": str(tmp_path / "model"), "device": "cpu"}}, environ={})
    save_tiny(tmp_path / "model", cfg.align)
    pub = _Pub()
    w = fuse_node.Worker(cfg, torch.device("cpu"), pub)  # type: ignore[arg-type]
    assert w.load(reason="test")
    rng = np.random.default_rng(0)
    text_only = {"video": False, "audio": False}
    win = make_window(rng, **text_only)
    n = 1500
    sources = [f"inv-{i}" for i in range(n)]
    sources[400::100] = ["cam1"] * len(sources[400::100])  # configured, after the cap is full
    before = prom.local()
    for i in range(0, n, 250):
        w.handle([Pending(dataclasses.replace(win, source=s, seq=k), 0)
                  for k, s in enumerate(sources[i:i + 250], start=i)])
    w.tick(clock.now_ns())
    after = prom.local()
    assert [(t, s) for t, s, _ in pub.sent] == [(topics.class_topic(s), s) for s in sources]
    cam1 = sources.count("cam1")
    assert [q for _, s, q in pub.sent if s == "cam1"] == list(range(cam1))
    invented = n - cam1
    new = (_label_values(after, "source", FUSE_FAMILIES)
           - _label_values(before, "source", FUSE_FAMILIES))
    assert new == {"cam1", OTHER} | {f"inv-{i}" for i in range(MAX_NAMES - 1)}

    def delta(name: str, **labels: str) -> float:
        return prom.total(after, name, **labels) - prom.total(before, name, **labels)

    assert delta("streamfuse_classifications_total", source="cam1") == cam1
    assert delta("streamfuse_classifications_total", source=OTHER) == invented - (MAX_NAMES - 1)
    assert delta("streamfuse_messages_out_total", node="fuse", topic="class/_other") \
        == invented - (MAX_NAMES - 1)
    assert delta("streamfuse_source_names_folded_total", node="fuse") \
        >= invented - (MAX_NAMES - 1)
    assert len(w._published) <= MAX_NAMES + 1
    assert len(w.seq) <= fuse_node.SEQ_SOURCES_MAX and "cam1" in w.seq
