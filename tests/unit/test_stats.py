"""The one percentile helper: nearest rank, so a reported figure was measured."""

import math

from streamfuse.stats import percentile


def test_nearest_rank_of_unsorted_values() -> None:
    vals = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert [percentile(vals, p) for p in (0, 50, 100)] == [1.0, 3.0, 5.0]
    assert percentile(vals, 99) == 5.0 and percentile(vals, 10) == 1.0


def test_every_answer_is_a_value_given() -> None:
    vals = [0.3, 10.0, 7.5, 2.25]
    assert all(percentile(vals, p) in vals for p in range(0, 101, 5))


def test_no_values_is_nan() -> None:
    assert math.isnan(percentile([], 50))
