"""A hostile publisher against the real daemon: absurd stamps and seqs (issue #14).

One ``streamfuse run`` (tiny model, no configured source) is fed a healthy
``room1`` stream stamped with the current time for the whole module. Each test
then sends one attack from a plain PUB on ``bus.input``, built by hand, and
checks what an operator would: classifications of the healthy stream keep
arriving, no window is answered twice or stamped in the attacker's time, the
right counter moved on ``/metrics``, and the daemon said why on stderr.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from streamfuse import clock
from streamfuse.wire import topics
from tests.conftest import BusEnv
from tests.helpers.hostile import (
    Collector,
    HostilePub,
    child_pids,
    free_port,
    text_parts,
)
from tests.helpers.proc import wait_for
from tests.helpers.prom import scrape, total
from tests.integration.daemon_fixtures import Daemon, Feeder

pytestmark = pytest.mark.slow

S = clock.NS_PER_S
HOUR = 3600 * S
NEAR_2_64 = 2**64 - 1 - 5 * 10**8
SANE_NS = 10 * S  # classifications must lie this close to the time the stream was observed


@dataclass
class Rig:
    daemon: Daemon
    port: int
    collector: Collector
    hostile: HostilePub
    start_ns: int
    log: Path


def _feed(ctx: zmq.Context, env: BusEnv, stop: threading.Event) -> None:
    feeder = Feeder(ctx, env.cfg.bus)  # its socket lives in this thread
    try:
        while not stop.wait(0.005):
            feeder.step()
    finally:
        feeder.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    env = BusEnv(tmp_path_factory.mktemp("hostile"))
    port = free_port()
    daemon = Daemon(env, f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    ctx = zmq.Context()
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(ctx, env, stop), name="feeder")
    collector = None
    hostile = HostilePub(ctx, env.cfg.bus.input, env.cfg.bus.output)
    try:
        daemon.wait_ready(120)
        start = clock.now_ns()
        feeder.start()
        collector = Collector(ctx, env.cfg.bus.output,
                              [topics.class_topic("room1"), topics.class_topic("ghost")])
        hostile.warm()
        wait_for(lambda: len(collector.snapshot()) >= 3, timeout=120,
                 what="the first classifications of the healthy stream")
        yield Rig(daemon, port, collector, hostile, start, daemon.log)
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(10)
        if collector is not None:
            collector.close()
        hostile.close()
        ctx.term()
        assert daemon.close() == 0


def _attack(rig: Rig, messages: list[list[bytes]], *, counter: tuple[str, dict[str, str]],
            at_least: int) -> tuple[dict, dict, str]:
    """Send ``messages``; wait until healthy windows newer than the attack are classified
    and ``counter`` has moved by ``at_least``. Returns metrics before, after, new log."""
    before = scrape(rig.port)
    log_from = len(rig.log.read_text())
    sent_ns = clock.now_ns()
    for parts in messages:
        rig.hostile.send(parts)

    def healthy_after() -> bool:
        return sum(c.t_start_ns >= sent_ns for c in rig.collector.snapshot()) >= 3

    wait_for(healthy_after, timeout=60, interval=0.1,
             what="classifications of windows after the attack")
    name, labels = counter
    after: dict = {}

    def moved() -> bool:
        after.update(scrape(rig.port))
        return total(after, name, **labels) - total(before, name, **labels) >= at_least

    wait_for(moved, timeout=30, interval=0.2, what=f"{name}{labels} to move by {at_least}")
    return before, after, rig.log.read_text()[log_from:]


def _assert_healthy(rig: Rig, after: dict) -> None:
    got = rig.collector.snapshot()
    keys = [(c.source, c.t_start_ns) for c in got]
    assert len(keys) == len(set(keys)), "a window was answered twice"
    assert {c.source for c in got} == {"room1"}
    now = clock.now_ns()
    stray = [c for c in got if not rig.start_ns - SANE_NS <= c.t_start_ns <= now + SANE_NS]
    assert not stray, f"classifications stamped outside the observed time: {stray[:3]}"
    restarts = {k: v for k, v in after.items() if k[0] == "streamfuse_child_restarts_total"}
    assert not any(restarts.values()), f"a child process was restarted: {restarts}"
    assert total(after, "streamfuse_resyncs_total", source="room1") == 0


def test_a_near_2_64_stamp_for_an_unknown_source_is_dropped(rig: Rig) -> None:
    _, after, log = _attack(
        rig, [text_parts("ghost", seq=0, t_ns=NEAR_2_64)],
        counter=("streamfuse_messages_dropped_total",
                 {"node": "align", "topic": "ghost/text", "reason": "time"}), at_least=1)
    _assert_healthy(rig, after)
    assert ("ghost/text: dropped a message: time: t_ns 18446744073209551615 is not between "
            "2000-01-01 and 2200-01-01") in log


def test_a_burst_of_near_2_64_stamps_on_the_fed_source_is_dropped(rig: Rig) -> None:
    burst = [text_parts("room1", seq=10 + i, t_ns=NEAR_2_64 + i) for i in range(3)]
    before, after, log = _attack(
        rig, burst, counter=("streamfuse_messages_dropped_total",
                             {"node": "align", "topic": "room1/text", "reason": "time"}),
        at_least=3)
    _assert_healthy(rig, after)
    labels = {"node": "align", "topic": "room1/text", "reason": "time"}
    assert total(after, "streamfuse_messages_dropped_total", **labels) - \
        total(before, "streamfuse_messages_dropped_total", **labels) == 3
    assert re.search(r"room1/text: dropped a message: time: t_ns 1844674407\d+ is not between", log)


@pytest.mark.parametrize(("shift", "reason", "why"), [
    (HOUR, "future", "too far ahead of the source's clock"),
    (-HOUR, "past", "too far behind the source's clock"),
])
def test_a_burst_of_texts_an_hour_away_moves_nothing(rig: Rig, shift: int, reason: str,
                                                      why: str) -> None:
    now = clock.now_ns()
    burst = [text_parts("room1", seq=20 + i, t_ns=now + shift + i * S) for i in range(3)]
    before, after, log = _attack(
        rig, burst, counter=("streamfuse_messages_dropped_total",
                             {"node": "align", "topic": "room1/text", "reason": reason}),
        at_least=3)
    _assert_healthy(rig, after)
    assert re.search(rf"room1/text: dropped \d message\(s\) stamped {re.escape(why)}", log), log
    assert "timeline moved" not in log


def test_a_huge_seq_counts_one_reset_not_lost_messages(rig: Rig) -> None:
    top = 2**64 - 1
    labels = {"node": "align", "topic": "room1/text"}
    before, after, log = _attack(
        rig, [text_parts("room1", seq=top, t_ns=clock.now_ns())],
        counter=("streamfuse_seq_resets_total", labels), at_least=1)
    _assert_healthy(rig, after)
    gaps = total(after, "streamfuse_seq_gap_messages_total", **labels) - \
        total(before, "streamfuse_seq_gap_messages_total", **labels)
    assert gaps < 1000, f"seq gap counter moved by {gaps}"
    assert re.search(rf"room1/text: seq leapt from \d+ to {top}, counted as a reset", log), log


def test_after_a_sigkill_of_the_aligner_windows_total_covers_the_classifications(rig: Rig) -> None:
    """Last in the module: the supervisor restarts the killed aligner."""
    (pid,) = child_pids(rig.daemon.proc.pid, "streamfuse align")
    n = len(rig.collector.snapshot())
    wait_for(lambda: len(rig.collector.snapshot()) > n, timeout=30, interval=0.01,
             what="a classification to kill the aligner right after")
    os.kill(pid, signal.SIGKILL)  # before its counters' next periodic flush
    killed_ns = clock.now_ns()

    def resumed() -> bool:
        return sum(c.received_ns > killed_ns for c in rig.collector.snapshot()) >= 3

    wait_for(resumed, timeout=90, interval=0.1, what="classifications after the aligner restarted")
    m = scrape(rig.port)
    windows = total(m, "streamfuse_windows_total", source="room1")
    answered = total(m, "streamfuse_classifications_total", source="room1")
    assert answered > 0 and windows >= answered, (windows, answered)
    assert total(m, "streamfuse_child_restarts_total", child="aligner") == 1
