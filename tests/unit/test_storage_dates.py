"""storage reads a date's counters and indexes them by counting's date rule (no server)."""

from __future__ import annotations

import pytest

from counting import DATE_WIDTH, bucket_labels, bucket_on_date
from settings import CassandraSettings
from storage import date_slices, period_of
from storage.counters import INDEX_RESOLUTION, sink_layout


def test_date_slices_are_the_dates_partitions_and_label_bounds() -> None:
    assert date_slices("2018-12-07") == [("2018-12", "2018-12-07", "2018-12-07U")]
    assert date_slices("2018-12-07", include_month=True) == [
        ("2018", "2018-12", "2018-12\x00"),
        ("2018-12", "2018-12-07", "2018-12-07U"),
    ]


@pytest.mark.parametrize("ts_s", [1544153562, 1544140799, 1546300800, 1583020800])
@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "America/St_Johns"])
def test_a_date_slice_selects_exactly_the_counters_on_the_date(ts_s: int, zone: str) -> None:
    date = "2018-12-07"
    for resolution, label in zip(("hour", "day", "month"), bucket_labels(ts_s, zone), strict=True):
        selected = any(
            period == period_of(resolution, label) and low <= label < high
            for period, low, high in date_slices(date, include_month=True)
        )
        assert selected is bucket_on_date(resolution, label, date, include_month=True)


@pytest.mark.parametrize("level", ["account", "customer"])
def test_sink_layout_states_the_index_rule(level: str) -> None:
    layout = sink_layout(CassandraSettings(), "shadow", level)
    assert (layout.index_resolution, layout.date_width) == (INDEX_RESOLUTION, DATE_WIDTH)
    assert (layout.index_resolution, layout.date_width) == ("hour", 10)
