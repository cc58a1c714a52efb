"""What "on date D" means (counting.buckets): the labels of a date, their label bounds, the
earliest instant of a date, shared by storage, compare and (through SinkLayout) the JVM sink."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counting import (
    DATE_WIDTH,
    DATED_RESOLUTIONS,
    LABEL_WIDTH,
    RESOLUTIONS,
    bucket_date,
    bucket_labels,
    bucket_on_date,
    date_label_range,
    earliest_instant_s,
    labels_on_date,
    month_label_range,
    month_of,
)

ZONES = [
    "UTC",
    "America/New_York",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "America/St_Johns",
]
instants = st.integers(min_value=946684800, max_value=4102444799)


def test_label_widths_are_the_label_formats() -> None:
    hour, day, month = bucket_labels(1544153562, "UTC")
    assert (hour, day, month) == ("2018-12-07T03", "2018-12-07", "2018-12")
    assert [len(x) for x in (hour, day, month)] == [LABEL_WIDTH[r] for r in RESOLUTIONS]
    assert len(day) == DATE_WIDTH and DATED_RESOLUTIONS == ("hour", "day")
    assert bucket_date(hour) == bucket_date(day) == day and month_of(day) == month_of(hour)
    with pytest.raises(ValueError, match="no date"):
        bucket_date(month)


@pytest.mark.parametrize(
    ("resolution", "bucket", "date", "include_month", "expected"),
    [
        ("hour", "2018-12-07T03", "2018-12-07", False, True),
        ("hour", "2018-12-07T23", "2018-12-07", True, True),
        ("hour", "2018-12-08T00", "2018-12-07", True, False),
        ("day", "2018-12-07", "2018-12-07", False, True),
        ("day", "2018-12-06", "2018-12-07", True, False),
        ("month", "2018-12", "2018-12-07", False, False),
        ("month", "2018-12", "2018-12-07", True, True),
        ("month", "2018-11", "2018-12-07", True, False),
    ],
)
def test_bucket_on_date(
    resolution: str, bucket: str, date: str, include_month: bool, expected: bool
) -> None:
    assert bucket_on_date(resolution, bucket, date, include_month) is expected


@pytest.mark.parametrize(
    ("labels", "date", "include_month", "expected"),
    [
        (("2018-12-07T03", "2018-12-07", "2018-12"), "2018-12-07", False, True),
        (("2018-12-08T03", "2018-12-08", "2018-12"), "2018-12-07", False, False),
        (("2018-12-08T03", "2018-12-08", "2018-12"), "2018-12-07", True, True),
        (("2019-01-07T03", "2019-01-07", "2019-01"), "2018-12-07", True, False),
    ],
)
def test_labels_on_date(
    labels: tuple[str, str, str], date: str, include_month: bool, expected: bool
) -> None:
    assert labels_on_date(labels, date, include_month) is expected


@settings(max_examples=300, deadline=None)
@given(a=instants, b=instants, zone=st.sampled_from(ZONES))
def test_a_dates_label_range_holds_its_labels_and_no_other(a: int, b: int, zone: str) -> None:
    """Every hour and day label of date D lies in date_label_range(D), and a label lies in
    it exactly when it is on D; a month's range holds its label alone."""
    date = bucket_labels(a, zone)[1]
    low, high = date_label_range(date)
    hour, day, month = bucket_labels(b, zone)
    for resolution, label in zip(RESOLUTIONS, (hour, day, month), strict=True):
        on = bucket_on_date(resolution, label, date)
        assert (low <= label < high) is on
        assert on is (resolution in DATED_RESOLUTIONS and bucket_date(label) == date)
    mlow, mhigh = month_label_range(month_of(date))
    assert (mlow <= month < mhigh) is (month == month_of(date))
    assert not mlow <= day < mhigh and not mlow <= hour < mhigh


@settings(max_examples=300, deadline=None)
@given(second=instants, zone=st.sampled_from(ZONES))
def test_no_event_of_a_date_is_earlier_than_its_earliest_instant(second: int, zone: str) -> None:
    _, day, _ = bucket_labels(second, zone)
    assert second >= earliest_instant_s(day)
    assert second >= earliest_instant_s(day, include_month=True)
    assert earliest_instant_s(day, include_month=True) == earliest_instant_s(month_of(day) + "-01")


def test_the_earliest_instant_is_midnight_at_utc_plus_14() -> None:
    start = earliest_instant_s("2020-03-07")
    assert start == int(datetime(2020, 3, 6, 10, tzinfo=UTC).timestamp())
    assert earliest_instant_s("2020-03-07", include_month=True) == int(
        datetime(2020, 2, 29, 10, tzinfo=UTC).timestamp()
    )
    # the bound is tight: Kiritimati's date begins at it
    assert bucket_labels(start, "Pacific/Kiritimati")[1] == "2020-03-07"
    assert bucket_labels(start - 1, "Pacific/Kiritimati")[1] == "2020-03-06"


def test_no_zone_is_ahead_of_utc_plus_14() -> None:
    for name in sorted(available_timezones()):
        zone = ZoneInfo(name)
        for year in (2000, 2013, 2026):
            for month in (1, 7):
                offset = datetime(year, month, 1, tzinfo=UTC).astimezone(zone).utcoffset()
                assert offset is not None and offset.total_seconds() <= 14 * 3600, name


@settings(max_examples=300, deadline=None)
@given(second=instants, zone=st.sampled_from([*ZONES, "Etc/GMT+12", "Pacific/Niue"]))
def test_no_event_of_a_date_is_at_or_after_its_end_everywhere(second: int, zone: str) -> None:
    from counting.buckets import date_over_s

    _, day, _ = bucket_labels(second, zone)
    assert second < date_over_s(day)
    assert second < date_over_s(day, include_month=True)


def test_a_date_is_over_everywhere_at_the_next_midnight_at_utc_minus_12() -> None:
    from counting.buckets import date_over_s

    end = date_over_s("2020-02-28")
    assert end == int(datetime(2020, 2, 29, 12, tzinfo=UTC).timestamp())
    assert date_over_s("2020-02-10", include_month=True) == int(
        datetime(2020, 3, 1, 12, tzinfo=UTC).timestamp()
    )
    assert date_over_s("2020-12-31", include_month=True) == date_over_s("2020-12-31")
    # the bound is tight: UTC-12's date ends at it
    assert bucket_labels(end - 1, "Etc/GMT+12")[1] == "2020-02-28"
    assert bucket_labels(end, "Etc/GMT+12")[1] == "2020-02-29"


def test_no_zone_is_behind_utc_minus_12() -> None:
    for name in sorted(available_timezones()):
        zone = ZoneInfo(name)
        for year in (2013, 2026):
            for month in (1, 7):
                offset = datetime(year, month, 15, tzinfo=zone).utcoffset()
                assert offset is not None and offset.total_seconds() >= -12 * 3600, name
