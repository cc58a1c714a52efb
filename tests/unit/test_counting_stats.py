"""counting.stats.percentile: the one nearest-rank percentile of every benchmark and probe."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from counting.stats import percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.0, 3.0),
        ([3.0], 0.99, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),  # even count: the lower middle value
        ([4.0, 1.0, 3.0, 2.0], 0.51, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 0.0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 1.0, 4.0),
        ([5.0, 1.0, 3.0], 0.5, 3.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 101)], 0.07, 7.0),  # 0.07 * 100 is 7.000000000000001
        ([float(i) for i in range(1, 1001)], 0.99, 990.0),
    ],
)
def test_percentile_cases(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize("q", [-0.01, 1.01, 50.0])
def test_percentile_refuses_q_outside_unit_interval(q: float) -> None:
    with pytest.raises(ValueError, match="q in"):
        percentile([1.0], q)


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_percentile_is_nearest_rank(values: list[float], q: float) -> None:
    """The result is a value, at least q of the values are at most it, fewer are below it."""
    p = percentile(values, q)
    assert p in values
    n = len(values)
    at_most = sum(v <= p for v in values)
    below = sum(v < p for v in values)
    assert at_most >= math.ceil(round(q * n, 9))
    assert below < max(1, math.ceil(round(q * n, 9)))
    assert percentile(list(reversed(values)), q) == p
