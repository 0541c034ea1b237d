"""A worker killed with SIGKILL while it holds windows: the windows are lost, but counted
(``streamfuse_messages_dropped_total{node="fuse",reason="worker_lost"}``), so what the
aligner sent still equals what the workers answered plus what they dropped."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest
import zmq

from tests.helpers.faults import RunningDaemon, free_port
from tests.helpers.prom import scrape, total
from tests.integration.daemon_fixtures import Feeder

# A second source that goes quiet makes the batcher wait for it up to max_delay_ms: the
# worker then holds the first source's windows, a fixed number of them, when it is killed.
EXTRA = '[fusion]\nmax_delay_ms = 60000\nmax_batch = 64\n[metrics]\nlisten = "127.0.0.1:{port}"\n'


def _feed(d: RunningDaemon, feeders: list[Feeder], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for f in feeders:
            f.step()
        d.times("WATCHDOG")
        time.sleep(0.01)


def _books(port: int) -> tuple[float, float, float]:
    """(windows the aligner sent, classifications, windows the workers dropped)."""
    m = scrape(port)
    sent = sum(v for (n, lab), v in m.items() if n == "streamfuse_messages_out_total"
               and ("node", "align") in lab and dict(lab).get("topic", "").endswith("/window"))
    dropped = sum(v for (n, lab), v in m.items() if n == "streamfuse_messages_dropped_total"
                  and ("node", "fuse") in lab and ("reason", "undecodable") not in lab)
    return sent, total(m, "streamfuse_classifications_total"), dropped


def _wait(d: RunningDaemon, feeders: list[Feeder], pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _feed(d, feeders, 0.2)
        value = pred()
        if value:
            return value
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{d.log()[-3000:]}")


@pytest.mark.slow
def test_windows_held_by_a_killed_worker_are_counted(bus_env) -> None:
    port = free_port()
    d = RunningDaemon(bus_env, EXTRA.format(port=port))
    try:
        d.wait_ready()
        with zmq.Context() as ctx:
            a, b = Feeder(ctx, bus_env.cfg.bus, "room1"), Feeder(ctx, bus_env.cfg.bus, "room2")
            try:
                _wait(d, [a, b], lambda: total(scrape(port), "streamfuse_classifications_total",
                                               source="room2") > 0, 60, "classifications of both")
                _wait(d, [a], lambda: total(scrape(port), "streamfuse_worker_windows_held") >= 4,
                      30, "the worker to hold windows")
                held = total(scrape(port), "streamfuse_worker_windows_held")
                pid = int(re.findall(r"worker-0 started \(pid (\d+)\)", d.log())[-1])
                os.kill(pid, signal.SIGKILL)
                _wait(d, [a], lambda: "worker-0 died holding" in d.log(), 30, "the count")
                before = total(scrape(port), "streamfuse_classifications_total", source="room1")
                _wait(d, [a], lambda: total(scrape(port), "streamfuse_classifications_total",
                                            source="room1") > before, 90, "the restarted worker")
            finally:
                a.close()
                b.close()

            def balanced() -> tuple[float, float, float] | None:
                sent, answered, dropped = books = _books(port)
                return books if sent == answered + dropped and sent > 0 else None

            end = time.monotonic() + 30
            while not balanced() and time.monotonic() < end:
                d.pump(0.5)
            sent, answered, dropped = _books(port)
            assert sent == answered + dropped, (sent, answered, dropped, d.log()[-2000:])
            lost = total(scrape(port), "streamfuse_messages_dropped_total", reason="worker_lost")
            assert lost >= held >= 4, (lost, held)
            assert f"worker-0 died holding {int(lost)} window(s)" in d.log()
    finally:
        assert d.close() == 0, d.log()[-3000:]
