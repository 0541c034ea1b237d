"""Pure decisions of the supervisor: when to restart a child, whether the pipeline lives.

No clocks, no processes, no sockets: every method takes ``now_ns``, so the
rules are tested with a fake clock (``tests/unit/test_health.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from streamfuse.clock import NS_PER_S as NS


@dataclass
class RestartPolicy:
    """Exponential backoff; give up after ``max_crashes`` within ``window_s``.

    The n-th crash inside the window waits ``base_s * 2**(n-1)`` (capped at
    ``max_s``) before the restart. Crashes older than the window are forgotten,
    so a child that crashes once a day is restarted quickly forever.
    """

    base_s: float = 0.25
    max_s: float = 30.0
    max_crashes: int = 5
    window_s: float = 60.0
    crashes: deque[int] = field(default_factory=deque)

    def on_crash(self, now_ns: int) -> float | None:
        """Record a crash; the delay before restarting, or None to give up."""
        self.crashes.append(now_ns)
        while self.crashes and now_ns - self.crashes[0] > self.window_s * NS:
            self.crashes.popleft()
        n = len(self.crashes)
        if n >= self.max_crashes:
            return None
        return min(self.base_s * 2 ** (n - 1), self.max_s)

    def describe(self) -> str:
        return f"{len(self.crashes)} times within {self.window_s:g} s"


@dataclass
class Liveness:
    """Is data going through? Classifications must follow data.

    ``on_input`` is called for capture traffic seen on the bus, ``on_output``
    for classifications. Heartbeats (``data=False``) say that a source is up and
    let its windows close, but a window of heartbeats alone holds nothing to
    classify: an idle text-only source is alive without classifications. While
    data arrives (the last within ``quiet_s``), the pipeline is stalled when no
    classification came for ``stall_s`` (counted from the first data after a
    quiet spell, so start-up and a model-less worker are not stalls: pass
    ``expect_output=False`` then).
    """

    stall_s: float
    quiet_s: float = 2.0
    last_input_ns: int | None = None  # data or heartbeat
    last_data_ns: int | None = None
    last_output_ns: int | None = None
    flowing_since_ns: int | None = None

    def on_input(self, now_ns: int, *, data: bool = True) -> None:
        self.last_input_ns = now_ns
        if not data:
            return
        if self.last_data_ns is None or now_ns - self.last_data_ns > self.quiet_s * NS:
            self.flowing_since_ns = now_ns
        self.last_data_ns = now_ns

    def on_output(self, now_ns: int) -> None:
        self.last_output_ns = now_ns

    def inputs_flowing(self, now_ns: int) -> bool:
        """Data (not only heartbeats) arrived within ``quiet_s``."""
        return self.last_data_ns is not None and now_ns - self.last_data_ns <= self.quiet_s * NS

    def stalled(self, now_ns: int, *, expect_output: bool = True) -> str | None:
        """A reason when data flows but classifications do not; else None."""
        if not expect_output or not self.inputs_flowing(now_ns):
            return None
        since = now_ns if self.flowing_since_ns is None else self.flowing_since_ns
        if self.last_output_ns is not None:
            since = max(since, self.last_output_ns)
        if now_ns - since > self.stall_s * NS:
            return f"data flows but no classification for {(now_ns - since) / NS:.1f} s"
        return None
