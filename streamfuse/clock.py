"""The only module that reads a clock.

Every timestamp in streamfuse is an integer count of nanoseconds since the Unix
epoch. Within one process time comes from the monotonic clock anchored once to
the wall clock, so an NTP step never makes time run backwards inside a process
(docs/architecture.md, "Time"). Core logic never calls into this module: it receives
``now_ns`` as an argument.
"""

from __future__ import annotations

import time

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

_ANCHOR_WALL_NS = time.time_ns()
_ANCHOR_MONO_NS = time.monotonic_ns()


def now_ns() -> int:
    """Epoch nanoseconds on this process's monotonic timeline."""
    return _ANCHOR_WALL_NS + (time.monotonic_ns() - _ANCHOR_MONO_NS)


def monotonic_ns() -> int:
    """Raw monotonic nanoseconds, for measuring durations only."""
    return time.monotonic_ns()


def perf_ns() -> int:
    """Highest-resolution counter, for benchmarks and latency breakdowns."""
    return time.perf_counter_ns()


def wall_ns() -> int:
    """The unanchored wall clock, used only to report cross-host offset and to compare with
    file times (the recorder's retention)."""
    return time.time_ns()


def sleep_until_ns(deadline_ns: int) -> None:
    """Sleep until ``now_ns() >= deadline_ns`` (for pacing replays and files)."""
    remaining = deadline_ns - now_ns()
    if remaining > 0:
        time.sleep(remaining / NS_PER_S)


def adc_time_to_epoch_ns(adc_time_s: float, current_time_s: float, at_now_ns: int) -> int:
    """Map a PortAudio stream time to epoch nanoseconds.

    PortAudio reports ``inputBufferAdcTime`` (when the first sample of a block
    hit the converter) and ``currentTime`` on its own stream clock. ``at_now_ns``
    is :func:`now_ns` read in the same callback, so the block's epoch time is
    ``at_now_ns - (currentTime - inputBufferAdcTime)``. When a host API reports
    zeros (some ALSA plugins do) the block is taken as captured now.
    """
    if adc_time_s <= 0.0 or current_time_s <= 0.0:
        return at_now_ns
    lag_ns = round((current_time_s - adc_time_s) * NS_PER_S)
    if lag_ns < 0 or lag_ns > 10 * NS_PER_S:
        return at_now_ns
    return at_now_ns - lag_ns


def ms_to_ns(ms: float) -> int:
    return round(ms * NS_PER_MS)


def ns_to_ms(ns: int | float) -> float:
    return ns / NS_PER_MS
