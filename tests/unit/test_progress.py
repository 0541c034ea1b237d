"""Progress reports: a tqdm bar on a terminal, plain periodic log lines anywhere else."""

from __future__ import annotations

import io
import logging

import pytest

from streamfuse.clock import NS_PER_S as S
from streamfuse.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "streamfuse.progress"]


def test_plain_lines_every_tenth_of_the_total(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="streamfuse.progress")
    with Progress("build", 100, unit="segment", terminal=False, now_ns=clock) as p:
        for i in range(100):
            clock.t += S // 2  # 2 segments/s: a tenth of the work takes 5 s, less than every_s
            p.set_note(f"step {i + 1}")
            p.update()
    lines = _lines(caplog)
    assert len(lines) == 10  # 10 %, 20 %, ... 90 %, then the line saying it is done
    assert lines[0] == ("build: 10/100 segment (10 %), 2.0 segment/s, 0:45 left, 0:05 elapsed, "
                        "step 10")
    assert lines[4].startswith("build: 50/100 segment (50 %), 2.0 segment/s, 0:25 left")
    assert lines[-1] == ("build: 100/100 segment (100 %), 2.0 segment/s, 0:00 left, 0:50 elapsed, "
                         "step 100 (done)")


def test_plain_lines_every_10_s_when_the_total_is_unknown(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="streamfuse.progress")
    p = Progress("replay", None, unit="s", decimals=1, terminal=False, now_ns=clock)
    for i in range(1, 61):
        clock.t = i * S
        p.advance_to(i * 4.0)  # 4x real time
    p.close()
    lines = _lines(caplog)
    assert len(lines) == 7  # at 10, 20, ... 60 s, and done
    assert lines[0] == "replay: 40.0 s, 4.0 s/s, 0:10 elapsed"
    assert lines[-1] == "replay: 240.0 s, 4.0 s/s, 1:00 elapsed (done)"


def test_no_line_more_often_than_the_rules_allow(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="streamfuse.progress")
    p = Progress("train", 10_000, unit="step", terminal=False, now_ns=clock)
    for _ in range(10_000):
        clock.t += S // 1000  # fast steps: 10 s pass after 10,000 of them
        p.update()
    assert len(_lines(caplog)) == 9  # one per tenth up to 90 %, not one per step
    p.close()


def test_a_terminal_gets_a_bar_with_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="streamfuse.progress")
    with Progress("training", 50, unit="step", terminal=True, stream=out) as p:
        p.set_note("epoch 1/5 loss 0.6931")
        for _ in range(50):
            p.update()
        p.write("epoch 1/5 loss 0.6931 val_acc 0.5000")
    text = out.getvalue()
    last = text.split("\r")[-1]
    assert last.startswith("training: 100%") and "50/50" in last and "step/s" in last
    assert "<00:00" in last and "epoch 1/5 loss 0.6931" in last  # time left, then the note
    assert "epoch 1/5 loss 0.6931 val_acc 0.5000\n" in text
    assert _lines(caplog) == []  # the bar, not log lines


def test_disabled_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="streamfuse.progress")
    for terminal in (True, False):
        with Progress("x", 10, enabled=False, terminal=terminal, stream=out) as p:
            p.update(10)
            p.write("a line")
    assert out.getvalue() == "" and _lines(caplog) == []
