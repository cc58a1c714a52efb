"""Time buckets: the label of the local period containing a timestamp (SEMANTICS.md §3).

Labels are local wall-clock labels in the event's time zone: in a fall-back change the
repeated hour is one bucket, a skipped hour has no bucket. Since 2000 every UTC offset and
every transition lies on a 15-minute grid, so the labels of a (zone, 15-minute block) are
cached; a block whose two ends disagree is never cached, which keeps the cache exact even
for a zone that breaks the rule.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

BLOCK_S = 900

Labels = tuple[str, str, str]  # (hour, day, month)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _labels_at(second: int, zone: ZoneInfo) -> Labels:
    local = datetime.fromtimestamp(second, zone)
    day = f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return (f"{day}T{local.hour:02d}", day, day[:7])


@lru_cache(maxsize=65536)
def block_labels(block: int, tz: str) -> Labels | None:
    """The labels of every second of the 15-minute block `block` (ts_s // BLOCK_S) in zone
    tz, or None when they are not all the same (ask bucket_labels per second then)."""
    zone = _zone(tz)
    first = _labels_at(block * BLOCK_S, zone)
    last = _labels_at(block * BLOCK_S + BLOCK_S - 1, zone)
    return first if first == last else None


def bucket_labels(ts_s: float | int, tz: str) -> Labels:
    """(hour, day, month) labels of the local period containing ts_s in zone tz."""
    second = math.floor(ts_s)  # periods start on whole seconds: floor, never round
    labels = block_labels(second // BLOCK_S, tz)
    if labels is None:
        labels = _labels_at(second, _zone(tz))
    return labels


def bucket_label(ts_s: float | int, tz: str, resolution: str) -> str:
    """The label of one resolution ("hour", "day" or "month")."""
    hour, day, month = bucket_labels(ts_s, tz)
    return {"hour": hour, "day": day, "month": month}[resolution]


# The labels of a date. A date "YYYY-MM-DD" is its day's label. An hour label "YYYY-MM-DDTHH"
# starts with its day label and a day label with its month label "YYYY-MM": a local hour lies
# in exactly one local day and month. So the label of each coarser resolution is a prefix of
# the finer one, of the width LABEL_WIDTH gives.
LABEL_WIDTH: dict[str, int] = {"hour": 13, "day": 10, "month": 7}
DATE_WIDTH = LABEL_WIDTH["day"]  # the date of an hour or day label is its prefix this wide
MONTH_WIDTH = LABEL_WIDTH["month"]  # the month of a date (or hour, day label): its prefix
# Resolutions whose labels lie in one date (each starts with it): a date's own counters.
DATED_RESOLUTIONS: tuple[str, ...] = ("hour", "day")
# The largest UTC offset of any IANA zone (Pacific/Kiritimati, UTC+14): a local date begins
# at the earliest 14 hours before the UTC midnight of the same date.
MAX_UTC_OFFSET_S = 14 * 3600
# The smallest (Etc/GMT+12, UTC-12): a local date ends at the latest 12 hours after the UTC
# midnight that ends the same date.
MIN_UTC_OFFSET_S = -12 * 3600
# [low, high) label bounds: every label of a date D (D itself and every "DTHH", "T" < "U")
# sorts at or after D and below D + DATE_END, a month's one label M below M + MONTH_END; the
# labels of other dates and months sort outside.
DATE_END = "U"
MONTH_END = "\x00"


def bucket_date(bucket: str) -> str:
    """The local date (YYYY-MM-DD) of an hour or day label; a month label has none."""
    if len(bucket) < DATE_WIDTH:
        raise ValueError(f"a month bucket has no date: {bucket!r}")
    return bucket[:DATE_WIDTH]


def month_of(label: str) -> str:
    """The month label (YYYY-MM) of a date, or of an hour, day or month label."""
    return label[:MONTH_WIDTH]


def bucket_on_date(resolution: str, bucket: str, date: str, include_month: bool = False) -> bool:
    """Is the counter of this (resolution, bucket) one of the date's: an hour or day bucket
    of it, or (with include_month) the month bucket containing it."""
    if resolution == "month":
        return include_month and bucket == date[:MONTH_WIDTH]
    return bucket[:DATE_WIDTH] == date


def labels_on_date(labels: Labels, date: str, include_month: bool = False) -> bool:
    """Does an event with these (hour, day, month) labels count on the date (with
    include_month: anywhere in its month)?"""
    return labels[1] == date or (include_month and labels[2] == date[:MONTH_WIDTH])


def date_label_range(date: str) -> tuple[str, str]:
    """[low, high) bounds of the labels of a date: its day label and its hour labels."""
    return date, date + DATE_END


def month_label_range(month: str) -> tuple[str, str]:
    """[low, high) bounds of the labels of a month: its month label alone."""
    return month, month + MONTH_END


def earliest_instant_s(date: str, include_month: bool = False) -> int:
    """The earliest epoch second whose label lies on the date (with include_month: in its
    month) in some time zone: that date's (month's first date's) midnight at UTC+14."""
    first = month_of(date) + "-01" if include_month else date
    midnight = datetime.fromisoformat(first).replace(tzinfo=UTC)
    return int(midnight.timestamp()) - MAX_UTC_OFFSET_S


def date_over_s(date: str, include_month: bool = False) -> int:
    """The first epoch second whose label lies after the date (with include_month: after its
    month) in every time zone: the midnight ending it (its month) at UTC-12. Before it, some
    zone still counts events on the date."""
    day = datetime.fromisoformat(date).date()
    if include_month:
        day = (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return int(end.timestamp()) - MIN_UTC_OFFSET_S
