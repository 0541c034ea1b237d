"""The recorder and a full disk, in a real daemon: it crashes, is given up on, and comes back
once there is room (at SIGHUP, or by the supervisor's periodic retry); all along its
counters add up to what its files hold plus what it dropped, with the reason."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.helpers.faults import RunningDaemon, fill, free_port, recorded, small_disk
from tests.helpers.prom import scrape, total
from tests.integration.daemon_fixtures import Feeder

ROOM_LEFT = 256 * 1024  # what the filler leaves: a few seconds of the feeder's traffic
GIVEN_UP = "recorder crashed"


def _config(disk: Path, port: int, retry_after_s: float, enabled: bool = True) -> str:
    on = "true" if enabled else "false"
    return (f'[record]\nenabled = {on}\npath = "{disk}"\nchunk_kb = 16\n'
            f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
            f'[supervisor]\nretry_after_s = {retry_after_s}\n')


def _pump(d: RunningDaemon, feeder: Feeder, until: Callable[[], Any], timeout: float,
          what: str) -> Any:
    """Keep feeding the bus (and draining the notify socket) until ``until()`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        feeder.step()
        d.times("WATCHDOG")
        value = until()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{d.log()[-3000:]}")


def _books(disk: Path, port: int) -> tuple[float, float, float, int]:
    """(messages counted, write_failed drops, other drops, messages in the files)."""
    m = scrape(port)
    in_files = sum(recorded(sorted(disk.glob("*.mcap"))).values())
    failed = total(m, "streamfuse_recorder_dropped_total", reason="write_failed")
    other = total(m, "streamfuse_recorder_dropped_total") - failed
    return total(m, "streamfuse_recorder_messages_total"), failed, other, in_files


def _fill_until_given_up(d: RunningDaemon, feeder: Feeder, disk: Path) -> tuple[Path, int]:
    filler = fill(disk, ROOM_LEFT)
    _pump(d, feeder, lambda: "No space left on device" in d.log(), 60, "the disk to fill")
    return filler, _pump(d, feeder, lambda: d.log().find("giving up on it") + 1, 90, "the give-up")


def _recording_again(d: RunningDaemon, feeder: Feeder, disk: Path, after: int) -> Path:
    """Wait until a file opened after log offset ``after`` holds messages; returns it."""
    def grown() -> Path | None:
        new = [Path(p) for p in _recording_paths(d.log()[after:])]
        counts = recorded([p for p in new if p.exists()])
        return next((p for p, n in counts.items() if n > 0), None)
    return _pump(d, feeder, grown, 60, "a new recording with messages")


def _recording_paths(log: str) -> list[str]:
    return [ln.split("recording to ", 1)[1].strip() for ln in log.splitlines()
            if "recording to " in ln]


def _balanced(disk: Path, port: int, *, write_failed: bool = False) -> bool:
    counted, failed, other, in_files = _books(disk, port)
    return counted == in_files and other == 0 and (failed > 0 or not write_failed)


def _check_books(disk: Path, port: int) -> None:
    """Counters equal the files, once the recorder is not running (nothing moves)."""
    counted, failed, other, in_files = _books(disk, port)
    assert counted == in_files, (counted, failed, other, in_files)
    assert failed > 0 and other == 0, (counted, failed, other)


def _run(tmp: Path, bus_env: Any, retry_after_s: float, revive: Callable[[RunningDaemon], None],
         why: str) -> None:
    port = free_port()
    with small_disk(tmp / "disk") as disk:
        d = RunningDaemon(bus_env, _config(disk, port, retry_after_s))
        try:
            d.wait_ready()
            with zmq.Context() as ctx:
                feeder = Feeder(ctx, bus_env.cfg.bus)
                try:
                    filler, gave_up_at = _fill_until_given_up(d, feeder, disk)
                    assert "No space left on device" in d.log()
                    # the given-up recorder's last metrics settle once its process is gone
                    _pump(d, feeder, lambda: _balanced(disk, port, write_failed=True), 15,
                          "the recorder's counters to equal its files")
                    _check_books(disk, port)
                    filler.unlink()  # room again
                    revive(d)
                    start = _pump(d, feeder, lambda: d.log().find(f"starting it again ({why})",
                                                                    gave_up_at) + 1, 60, why)
                    assert _recording_again(d, feeder, disk, start).parent == disk
                    bus_env.write(_config(disk, port, retry_after_s, enabled=False))
                    d.proc.send_signal(signal.SIGHUP)  # stop the recorder cleanly, files closed
                    _pump(d, feeder, lambda: "recorder is no longer configured" in d.log(), 30,
                          "the recorder to stop")
                    _pump(d, feeder, lambda: _balanced(disk, port), 15,
                          "the stopped recorder's counters to equal its files")
                    counted, failed, other, in_files = _books(disk, port)
                    assert counted == in_files and other == 0, (counted, failed, other, in_files)
                finally:
                    feeder.close()
        finally:
            assert d.close() == 0, d.log()[-3000:]


@pytest.mark.slow
def test_full_disk_then_sighup_brings_the_recorder_back(bus_env, tmp_path: Path) -> None:
    _run(tmp_path, bus_env, 600, lambda d: d.proc.send_signal(signal.SIGHUP), "SIGHUP")


@pytest.mark.slow
def test_full_disk_then_periodic_retry_brings_the_recorder_back(bus_env, tmp_path: Path) -> None:
    _run(tmp_path, bus_env, 6, lambda d: None, "periodic retry")
