"""The reference counts of an event log (SEMANTICS.md §4, §5): streaming, memory bounded by
the distinct counter keys and event ids, never by the size of the log.

Counts are kept at hour resolution only and rolled up to day and month when read: an hour
label determines its day and month labels (its first 10 and 7 characters), so this
is exact, and it makes one event cost 1 + F updates instead of 3 x (1 + F).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from counting.buckets import LABEL_WIDTH as _LABEL_WIDTH
from counting.buckets import bucket_labels
from counting.events import parse_event
from counting.fanout import TOTAL
from counting.model import (
    RESOLUTIONS,
    AccountCount,
    AccountKey,
    CustomerCount,
    CustomerKey,
    Event,
    Rejection,
)


def _account(key: tuple[str, ...], count: int, uniques: int) -> AccountCount:
    # tuple.__new__ builds the NamedTuples in C (their own __new__ is Python code)
    return _new(AccountCount, (_new(AccountKey, key), count, uniques))  # type: ignore[no-any-return]


def _customer(key: tuple[str, ...], count: int) -> CustomerCount:
    return _new(CustomerCount, (_new(CustomerKey, key), count))  # type: ignore[no-any-return]


_new: Any = tuple.__new__


class Dedup:
    """First delivery of an event_id wins; later ones are duplicates."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first(self, event_id: str) -> bool:
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Recount:
    """Accumulates valid events into account counts, uniques and customer counts."""

    def __init__(self, dedup: bool = True) -> None:
        self._dedup = Dedup() if dedup else None
        # (company, statistic, hour) -> {(facet, value): [count, set of customer_id]}; the
        # facet tuples of the event are the inner keys as they are, nothing is built per key
        self._account_hours: dict[tuple[str, str, str], dict[tuple[str, str], list[Any]]] = {}
        # (company, customer, statistic, hour) -> count
        # a plain dict: Counter's __missing__ is Python code, and most keys are new
        self._customer_hours: dict[tuple[str, ...], int] = {}
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.events = 0

    def add_raw(self, raw: bytes | str | dict[str, object]) -> Rejection | None:
        """Validate and count one delivery; returns its Rejection when it is invalid."""
        parsed = parse_event(raw)
        if isinstance(parsed, Rejection):
            self.rejected[parsed.reason.value] += 1
            return parsed
        self.add(parsed)
        return None

    def add(self, event: Event) -> bool:
        """Count one valid event; False when it is a duplicate (counted nowhere)."""
        if self._dedup is not None and not self._dedup.first(event.event_id):
            self.duplicates += 1
            return False
        self.events += 1
        hour = bucket_labels(event.timestamp, event.timezone)[0]
        company, statistic, customer = event.company_id, event.statistic_id, event.customer_id
        group = self._account_hours.get((company, statistic, hour))
        if group is None:
            group = self._account_hours[(company, statistic, hour)] = {}
        for facet in (TOTAL, *event.facets):
            entry = group.get(facet)
            if entry is None:
                group[facet] = [1, {customer}]
            else:
                entry[0] += 1
                entry[1].add(customer)
        ckey = (company, customer, statistic, hour)
        hours = self._customer_hours
        hours[ckey] = hours.get(ckey, 0) + 1
        return True

    def account(self) -> Iterator[AccountCount]:
        """Every account counter (hour, day, month), with its count and uniques."""
        for (company, statistic, hour), group in self._account_hours.items():
            for (facet, value), (count, seen) in group.items():
                yield _account((company, statistic, "hour", hour, facet, value), count, len(seen))
        for resolution in RESOLUTIONS[1:]:
            width = _LABEL_WIDTH[resolution]
            rolled: dict[tuple[str, ...], list[Any]] = {}
            rkey: tuple[str, ...]
            for (company, statistic, hour), group in self._account_hours.items():
                for (facet, value), (count, seen) in group.items():
                    rkey = (company, statistic, resolution, hour[:width], facet, value)
                    entry = rolled.get(rkey)
                    if entry is None:
                        rolled[rkey] = [count, [seen]]
                    else:
                        entry[0] += count
                        entry[1].append(seen)
            for rkey, (count, sets) in rolled.items():
                uniques = len(sets[0]) if len(sets) == 1 else len(set().union(*sets))
                yield _account(rkey, count, uniques)

    def customer(self) -> Iterator[CustomerCount]:
        """Every customer counter (hour, day, month), with its count."""
        for (company, customer, statistic, hour), count in self._customer_hours.items():
            yield _customer((company, customer, statistic, "hour", hour), count)
        for resolution in RESOLUTIONS[1:]:
            width = _LABEL_WIDTH[resolution]
            rolled: Counter[tuple[str, ...]] = Counter()
            for (company, customer, statistic, hour), count in self._customer_hours.items():
                rolled[(company, customer, statistic, resolution, hour[:width])] += count
            for ckey, count in rolled.items():
                yield _customer(ckey, count)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: a recount allocates millions of containers that
    live to the end, which makes every collection rescan them (a third of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def recount(lines: Iterable[bytes | str]) -> Recount:
    """The reference counts of an iterable of raw events (e.g. the lines of a JSONL file)."""
    result = Recount()
    with paused_gc():
        for line in lines:
            result.add_raw(line)
    return result
