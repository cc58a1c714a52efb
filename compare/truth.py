"""The third side of an audit: the reference counts of one date, recounted from raw events.

Streaming: each raw event is parsed and de-duplicated (counting.Dedup over every event seen,
so a redelivery is a duplicate whatever its date) and only events whose buckets fall on the
date (or in its month, with `include_month`) are counted, so memory is bounded by that date's
counters and the event ids, never by the size of the log. Duplicate deliveries are recounted
apart, which is what lets an audit say "legacy counted a redelivery" (SEMANTICS.md §5).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compare.diff import Counted, Unit
from counting import (
    DATED_RESOLUTIONS,
    AccountCount,
    Dedup,
    Recount,
    Rejection,
    bucket_labels,
    bucket_on_date,
    labels_on_date,
    parse_event,
)
from counting.events import read_lines
from counting.recount import paused_gc
from storage import Row


def unit_of(counted: Counted) -> Unit:
    """The index unit of a counter: (company, statistic) or (company, customer, statistic)."""
    k = counted.key
    if isinstance(counted, AccountCount):
        return ("account", (k[0], k[1]))
    return ("customer", (k[0], k[1], k[2]))


def on_date(counted: Counted, date: str, include_month: bool) -> bool:
    """Is this counter one of the date's: an hour or day bucket of it, or (with
    include_month) its month bucket."""
    return bucket_on_date(counted.key.resolution, counted.key.bucket, date, include_month)


@dataclass
class Truth:
    """The reference counts of one date, by unit, each unit's counters as sorted rows
    (`storage.row_of`: the form and order a store read returns them in)."""

    source: str
    by_unit: dict[Unit, list[Row]] = field(default_factory=dict)
    redelivered_by_unit: dict[Unit, list[Row]] = field(default_factory=dict)
    units_on_date: set[Unit] = field(default_factory=set)
    events_read: int = 0
    events_counted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def date_units(self) -> set[Unit]:
        """Units with a counter on the date itself (month buckets alone do not make one)."""
        return set(self.units_on_date)

    def stats(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "events_read": self.events_read,
            "events_counted": self.events_counted,
            "duplicates": self.duplicates,
            "rejected": dict(sorted(self.rejected.items())),
        }


def truth_of(raws: Iterable[bytes | str], date: str, include_month: bool, source: str) -> Truth:
    """Recount the events of `raws` that can fall on `date`."""
    firsts, duplicates = Recount(dedup=False), Recount(dedup=False)
    truth = Truth(source)
    with paused_gc():
        _count(raws, date, include_month, truth, firsts, duplicates)
        truth.by_unit = _by_unit(firsts, date, include_month, truth.units_on_date)
        truth.redelivered_by_unit = _by_unit(duplicates, date, include_month, set())
    return truth


def _count(
    raws: Iterable[bytes | str],
    date: str,
    include_month: bool,
    truth: Truth,
    firsts: Recount,
    duplicates: Recount,
) -> None:
    dedup = Dedup()
    for raw in raws:
        truth.events_read += 1
        event = parse_event(raw)
        if isinstance(event, Rejection):
            truth.rejected[event.reason.value] += 1
            continue
        first = dedup.first(event.event_id)
        if not labels_on_date(bucket_labels(event.timestamp, event.timezone), date, include_month):
            continue
        if first:
            truth.events_counted += 1
            firsts.add(event)
        else:
            truth.duplicates += 1
            duplicates.add(event)


def _by_unit(
    recount: Recount, date: str, include_month: bool, units_on_date: set[Unit]
) -> dict[Unit, list[Row]]:
    """The rows of each unit (as `row_of` makes them), sorted; `units_on_date` receives the
    units with a counter on the date itself (month buckets alone do not make one).

    A date can have millions of counters, so this is `on_date`, `unit_of` and `row_of`
    unrolled (the rows in `storage.rows`' column order; tests/unit/test_compare_diff.py holds
    them to `row_of`), and the unit of consecutive counters (Recount yields a unit's
    together) looked up once."""
    grouped: dict[Unit, list[Row]] = {}
    last: tuple[str, ...] = ()
    rows: list[Row] = []

    def rows_of(level: str, ids: tuple[str, ...]) -> list[Row]:
        found = grouped.get((level, ids))
        if found is None:
            found = grouped[(level, ids)] = []
        return found

    for (company, statistic, resolution, bucket, facet, value), count, uniques in recount.account():
        if not bucket_on_date(resolution, bucket, date, include_month):
            continue
        if last != (company, statistic):
            last = (company, statistic)
            rows = rows_of("account", last)
        if resolution in DATED_RESOLUTIONS:
            units_on_date.add(("account", last))
        rows.append((bucket, resolution, facet, value, count, uniques))
    last = ()
    for (company, customer, statistic, resolution, bucket), count in recount.customer():
        if not bucket_on_date(resolution, bucket, date, include_month):
            continue
        if last != (company, customer, statistic):
            last = (company, customer, statistic)
            rows = rows_of("customer", last)
        if resolution in DATED_RESOLUTIONS:
            units_on_date.add(("customer", last))
        rows.append((customer, statistic, bucket, resolution, count))
    for found in grouped.values():
        found.sort()
    return grouped


def file_lines(path: Path) -> Iterator[bytes]:
    """The raw events of a JSON Lines file (as `abacus recount` reads them)."""
    with path.open("rb") as stream:
        yield from read_lines(stream)
