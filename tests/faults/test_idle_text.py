"""An idle text-only daemon stays alive for systemd: heartbeats are input, and a window of
heartbeats holds nothing to classify, so the watchdog keeps getting its pings."""

from __future__ import annotations

import time

import pytest
import zmq

from streamfuse.wire import topics
from tests.helpers.faults import RunningDaemon

WATCHDOG_USEC = 4_000_000  # pings every 2 s; systemd would restart after 4 s without one
WATCH_S = 3 * WATCHDOG_USEC / 1e6


@pytest.mark.slow
def test_idle_text_only_daemon_keeps_its_watchdog_pings(bus_env) -> None:
    d = RunningDaemon(bus_env, '[[sources]]\nname = "room1"\n[sources.text]\ninput = "zmq"\n',
                      watchdog_usec=WATCHDOG_USEC)
    try:
        with zmq.Context() as ctx:
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            for prefix in (topics.class_topic("room1"), "room1/text"):
                sub.subscribe(prefix.encode())
            sub.connect(bus_env.cfg.bus.output)
            ready = d.wait_ready()
            seen: list[bytes] = []
            end = time.monotonic() + WATCH_S + 4  # the old code stopped pinging ~7.5 s in
            while time.monotonic() < end:
                while sub.poll(50):
                    seen.append(sub.recv_multipart()[0])
                d.times("WATCHDOG")
            sub.close()
        pings = [t for t in d.times("WATCHDOG") if t >= ready]
        gaps = [b - a for a, b in zip([ready, *pings], [*pings, time.monotonic()], strict=True)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, (gaps, d.log()[-2000:])
        assert len(pings) >= WATCH_S / (WATCHDOG_USEC / 2e6)
        assert seen.count(b"room1/text") > 50  # heartbeats every 100 ms all along
        assert not [t for t in seen if topics.is_class_topic(t)]  # and nothing to classify
        assert "pipeline not alive" not in d.log()
    finally:
        assert d.close() == 0
