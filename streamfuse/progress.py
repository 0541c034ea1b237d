"""Progress of long work (building a data set, reading recordings, training, replay).

On a terminal: a tqdm bar with the rate and the time left. Anywhere else (journald, CI,
a file) a bar's carriage returns would be one endless line, so the same progress comes
as plain log lines, at most one every ``every_s`` seconds or every ``every_fraction`` of
the total, plus a last one when the work ends.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from streamfuse import clock

log = logging.getLogger("streamfuse.progress")


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False  # closed, or replaced by an object without a terminal behind it


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """``total`` (None: unknown) of ``unit``; advance with :meth:`update` (by a step) or
    :meth:`advance_to` (to a position, e.g. seconds of recording read). ``note`` adds a
    status (a loss, a message count) to what is shown. ``enabled=False`` shows nothing.
    ``terminal`` None: whether ``stream`` is a terminal. ``now_ns``: the clock (tests
    pass a fake one)."""

    def __init__(self, desc: str, total: float | None = None, *, unit: str = "it",
                 decimals: int = 0, enabled: bool = True, stream: TextIO | None = None,
                 terminal: bool | None = None, every_s: float = 10.0,
                 every_fraction: float = 0.1,
                 now_ns: Callable[[], int] = clock.monotonic_ns) -> None:
        self.desc, self.total, self.unit, self.decimals = desc, total, unit, decimals
        self.n: float = 0
        self.note = ""
        self._stream = stream if stream is not None else sys.stderr
        self._every_ns = round(every_s * clock.NS_PER_S)
        self._every_fraction = every_fraction
        self._now = now_ns
        self._t0 = self._last_ns = now_ns()
        self._last_step = 0  # how many whole every_fraction steps have been reported
        self._closed = not enabled
        self._bar = None
        if enabled and (is_terminal(self._stream) if terminal is None else terminal):
            self._bar = self._tqdm()

    def _tqdm(self):  # type: ignore[no-untyped-def]
        from tqdm import tqdm

        # A terminal that reports no width (a pty nobody sized) would get an empty bar.
        sized = _columns(self._stream) > 0
        return tqdm(total=self.total, desc=self.desc, unit=self.unit, file=self._stream,
                    dynamic_ncols=sized, ncols=None if sized else 100,
                    nrows=None if sized else 24, mininterval=0.25)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.advance_to(self.n + n)

    def advance_to(self, position: float) -> None:
        if self._closed:
            return
        self.n = position
        if self._bar is not None:
            # rounded: tqdm shows a float position as it is, all its digits
            self._bar.n = round(position, self.decimals) if self.decimals else position
            self._bar.update(0)  # tqdm redraws at most every mininterval
            return
        if self.total and position >= self.total:
            return  # the end is reported once, by close()
        now = self._now()
        # counted in whole steps: 0.3 - 0.2 < 0.1 in floating point
        step = int(position / self.total / self._every_fraction + 1e-9) if self.total else 0
        if now - self._last_ns >= self._every_ns or step > self._last_step:
            self._last_ns, self._last_step = now, max(step, self._last_step)
            log.info("%s", self.line(now))

    def set_total(self, total: float | None) -> None:
        """For work whose size is known only once it has started."""
        self.total = total
        if self._bar is not None and not self._closed:
            self._bar.total = total
            self._bar.refresh()

    def set_note(self, note: str) -> None:
        self.note = note
        if self._bar is not None and not self._closed:
            self._bar.set_postfix_str(note, refresh=False)

    def write(self, text: str) -> None:
        """A line of its own (an epoch's result): above the bar on a terminal, else logged."""
        if self._bar is not None and not self._closed:
            self._bar.write(text, file=self._stream)
        elif not self._closed:
            log.info("%s", text)

    def line(self, now: int) -> str:
        """The plain report: position, share of the total, rate, time left, note."""
        d = self.decimals
        elapsed = (now - self._t0) / clock.NS_PER_S
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:.{d}f}"
        if self.total:
            done += f"/{self.total:.{d}f} {self.unit} ({100 * self.n / self.total:.0f} %)"
        else:
            done += f" {self.unit}"
        parts = [done]
        parts.append(f"{rate:.{max(d, 1)}f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"{_duration(max(0.0, self.total - self.n) / rate)} left")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.note:
            parts.append(self.note)
        return f"{self.desc}: " + ", ".join(parts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            log.info("%s (done)", self.line(self._now()))
