"""The systemd notify protocol against a real AF_UNIX datagram socket.

The supervisor is real; its children are stand-ins (a feeder publishing text,
an "aligner" turning it into classifications, a worker reporting a model), so
the pipeline's liveness is visible on the bus as it is in the daemon."""

from __future__ import annotations

import os
import re
import signal
import statistics
import time

import pytest

from tests.helpers.proc import ipc_ready, stop, wait_for
from tests.integration.supervised import ALIGNER, CAPTURE, WORKER, NotifySocket, StandinDaemon

CHILDREN = [
    {"name": "capture-room1-text", "role": "feeder", "phase": CAPTURE},
    {"name": "aligner", "role": "echo", "phase": ALIGNER, "essential": True},
    {"name": "worker-0", "role": "modelworker", "phase": WORKER, "essential": True, "hup": True},
]


@pytest.mark.slow
def test_ready_watchdog_status_stopping(bus_env) -> None:
    bus_env.write('[[sources]]\nname = "room1"\n[sources.text]\ninput = "zmq"\n')
    # an artifact exists, so the supervisor waits for the worker's own report
    (bus_env.root / "model").mkdir()
    (bus_env.root / "model" / "manifest.json").write_text("{}")
    ns = NotifySocket(bus_env.root / "notify.sock")
    d = StandinDaemon(bus_env, CHILDREN, env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: ns.times("READY"), timeout=20, what="READY=1")
        # READY only once the bus is bound
        assert ipc_ready(bus_env.cfg.bus.input) and ipc_ready(bus_env.cfg.bus.output)
        ready = [f for _, f in ns.received if "READY" in f][0]
        assert "model standin0" in ready["STATUS"]

        wait_for(lambda: len(ns.times("WATCHDOG")) >= 5, timeout=10, what="watchdog pings")
        pings = ns.times("WATCHDOG")
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert 0.3 < statistics.median(gaps) < 0.8  # half of WATCHDOG_USEC = 0.5 s

        def rate(status: str) -> float:
            m = re.search(r"([0-9.]+) classifications/s", status)
            return float(m.group(1)) if m else 0.0

        wait_for(lambda: any(rate(f.get("STATUS", "")) > 0 for _, f in ns.drain()), timeout=10,
                 what="STATUS with flowing classifications")

        (aligner,) = d.pids("aligner")
        os.kill(aligner, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            wait_for(lambda: any("aligner is stopped" in f.get("STATUS", "") for _, f in ns.drain()),
                     timeout=5, what="STATUS saying the aligner is stopped")
            # The ping already due may still leave; after that, silence.
            time.sleep(2.0)  # a silence window, not a wait for readiness
            late = [t for t in ns.times("WATCHDOG") if t > stopped_at + 0.6]  # one period of slack
            assert late == []
        finally:
            os.kill(aligner, signal.SIGCONT)
        resumed_after = time.monotonic()
        wait_for(lambda: [t for t in ns.times("WATCHDOG") if t > resumed_after], timeout=10,
                 what="pings again after SIGCONT")

        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0
        assert ns.times("STOPPING")
    finally:
        stop(d.proc)
        ns.close()


def test_notifier_never_blocks_on_a_reader_that_stopped_reading(tmp_path) -> None:
    import socket

    from streamfuse.service.notify import Notifier

    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(str(tmp_path / "n.sock"))
    try:
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "3000000"})
        assert n.watchdog_interval_s == 1.5
        sent = [n.status(f"line {i}") for i in range(100)]  # would hang if the socket blocked
        assert sent[0] and not sent[-1]
        assert reader.recv(100) == b"STATUS=line 0"
        n.close()
    finally:
        reader.close()
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None  # not ours
    assert not Notifier({}).ready()  # outside systemd: a no-op
