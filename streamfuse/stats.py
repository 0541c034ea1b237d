"""Small statistics shared by the demo's report and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0..100) of ``values``; NaN when there are none.

    Nearest rank, not interpolation: the figure is always a latency that was measured.
    """
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]
