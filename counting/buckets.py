"""Time buckets: the label of the local period containing a timestamp (SEMANTICS.md §3).

Labels are local wall-clock labels in the event's time zone: in a fall-back change the
repeated hour is one bucket, a skipped hour has no bucket. Since 2000 every UTC offset and
every transition lies on a 15-minute grid, so the labels of a (zone, 15-minute block) are
cached; a block whose two ends disagree is never cached, which keeps the cache exact even
for a zone that breaks the rule.
"""

from __future__ import annotations

import math
from datetime import datetime
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


def bucket_date(bucket: str) -> str:
    """The local date (YYYY-MM-DD) of an hour or day label; a month label has none."""
    if len(bucket) < 10:
        raise ValueError(f"a month bucket has no date: {bucket!r}")
    return bucket[:10]


# An hour label "YYYY-MM-DDTHH" starts with its day label (10 characters) and month label
# (7): a local hour lies in exactly one local day and month.
LABEL_WIDTH: dict[str, int] = {"hour": 13, "day": 10, "month": 7}
