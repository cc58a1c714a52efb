"""Summary statistics shared by every benchmark and probe: one definition of a percentile."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank percentile of `values` for q in [0, 1]; None when there are none.

    Nearest rank: with the n values sorted ascending, the smallest value such that at least
    q * n of the values are at most it, i.e. the value of rank ceil(q * n) (1-based), and the
    smallest value for q = 0. It is always one of the values, never an interpolation, so
    p100 is the maximum and p50 of an even count is the lower middle value. q * n is rounded
    to 9 decimals before the ceiling, so binary noise (0.07 * 100 = 7.000000000000001) does
    not move the rank.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a percentile is taken for q in [0, 1], not {q!r}")
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(round(q * len(ordered), 9)) - 1)]
