"""The aligner node's counters and log lines for what publishers get wrong (no sockets)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import REGISTRY

from streamfuse.align import node
from streamfuse.align.window import Aligner
from streamfuse.clock import NS_PER_S as S
from streamfuse.config import AlignConfig
from streamfuse.logs import Throttled
from streamfuse.wire import codec
from streamfuse.wire.schema import Window
from tests.unit.test_align_window import MS, T0, av, block, feed, text


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_seq_leap_counts_a_reset_not_lost_messages(caplog: pytest.LogCaptureFixture) -> None:
    counts = node._Counts(Aligner(AlignConfig()))
    topic = "leap/text"
    before = _sample("streamfuse_seq_gap_messages_total", node="align", topic=topic)
    with caplog.at_level(logging.WARNING, logger="streamfuse.align"):
        for i, seq in enumerate([0, 1, 5, 2**64 - 1, 6, 7, 7 + node.SEQ_GAP_MAX + 1]):
            counts.seq(topic, seq, T0 + i * S)
    assert counts.gaps[topic] == 3 + node.SEQ_GAP_MAX
    assert counts.resets[topic] == 2  # the leap to 2**64 - 1 and the step back to 6
    counts.flush(T0)
    after = _sample("streamfuse_seq_gap_messages_total", node="align", topic=topic)
    assert after - before == 3 + node.SEQ_GAP_MAX
    assert _sample("streamfuse_seq_resets_total", node="align", topic=topic) == 2
    assert "leap/text: seq leapt from 5 to 18446744073709551615, counted as a reset" in caplog.text


def test_throttled_lines_say_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    t = Throttled(logging.getLogger("streamfuse.test"), 10 * S)
    with caplog.at_level(logging.WARNING, logger="streamfuse.test"):
        logged = [t.log("k", T0 + i * MS, logging.WARNING, "bad %s", i) for i in range(100)]
        assert t.log("other", T0, logging.WARNING, "other key")
        assert t.log("k", T0 + 10 * S, logging.WARNING, "bad %s", "again")
    assert logged == [True] + [False] * 99
    assert caplog.messages == ["bad 0", "other key", "bad again (99 more like it not logged)"]


class _CheckingPush:
    """A PUSH socket that records windows_total at the moment each window leaves."""

    def __init__(self) -> None:
        self.at_send: list[float] = []

    def send_multipart(self, parts, flags: int = 0, copy: bool = True) -> None:
        self.at_send.append(_sample("streamfuse_windows_total", source="sent1"))


def test_windows_total_is_counted_before_each_window_is_sent() -> None:
    """After a SIGKILL windows_total must never be below the classifications."""
    counts = node._Counts(Aligner(AlignConfig()))
    push = _CheckingPush()
    before = _sample("streamfuse_windows_total", source="sent1")
    ws = [Window(source="sent1", seq=k, t_start_ns=T0 + k * 500 * MS,
                 t_end_ns=T0 + k * 500 * MS + S, present={"video": False, "audio": False,
                                                          "text": True},
                 texts=["x"], text_t_ns=[T0]) for k in range(3)]
    node._send(push, ws, counts)  # type: ignore[arg-type]
    assert push.at_send == [before + 1, before + 2, before + 3]


def test_a_resync_is_logged_as_a_warning_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    al = Aligner(AlignConfig(dead_after_ms=2000, required=["audio"]))
    counts = node._Counts(al)
    feed(al, [m for m in av(T0, T0 + 3000 * MS) if m.kind == "audio"])
    hour = 3600 * S
    for i in range(150):
        t = T0 + 3000 * MS + i * 20 * MS
        al.push(block(t + hour, 100 + i), t)
        al.pop_ready(t)
    al.push(text(T0 + 6000 * MS + hour, "x"), T0 + 6000 * MS)  # on the new timeline: accepted
    with caplog.at_level(logging.WARNING, logger="streamfuse.align"):
        node._log_resyncs(al.take_resyncs())
        counts.flush(T0 + 6000 * MS)
    assert _sample("streamfuse_resyncs_total", source="r1") == 1
    assert "r1: timeline moved by +3600." in caplog.text and "sustained audio data" in caplog.text
    assert not al.take_resyncs()


def test_rejected_messages_are_counted_by_reason_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    al = Aligner(AlignConfig())
    counts = node._Counts(al)
    feed(al, av(T0, T0 + 1000 * MS, src="rej"))
    for i in range(3):
        al.push(text(T0 + 3600 * S + i * S, "x", src="rej"), T0 + 1000 * MS)
    al.push(codec.audio_message("rej", 9, 2**64 - 1, np.zeros((4, 1), np.float32), 16000), T0)
    before = _sample("streamfuse_messages_dropped_total", node="align", topic="rej/text",
                     reason="future")
    with caplog.at_level(logging.WARNING, logger="streamfuse.align"):
        counts.flush(T0 + 1000 * MS)
    after = _sample("streamfuse_messages_dropped_total", node="align", topic="rej/text",
                    reason="future")
    assert after - before == 3
    assert _sample("streamfuse_messages_dropped_total", node="align", topic="rej/audio",
                   reason="time") == 1
    ahead = "rej/text: dropped 3 message(s) stamped too far ahead of the source's clock"
    assert ahead in caplog.text
    assert "rej/audio: dropped 1 message(s) stamped outside 2000-01-01..2200-01-01" in caplog.text
