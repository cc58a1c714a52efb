"""The reference counts of an event log (SEMANTICS.md §4, §5): streaming, memory bounded by
the distinct counter keys and event ids, never by the size of the log.

Counts are kept at hour resolution only and rolled up to day and month when read: an hour
label determines its day and month labels (its first 10 and 7 characters), so this is exact.
Per (company, statistic, hour) group the counts of its customers are kept, which are the
customer counters and the statistic's total at once (count = their sum, uniques = their
number); each facet keeps its count and its set of customers. One event costs one customer
update and one update per facet, instead of 3 x (1 + F) + 3.
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any

from counting.buckets import BLOCK_S, DATE_WIDTH, MONTH_WIDTH, block_labels, bucket_labels
from counting.events import parse_event
from counting.fanout import TOTAL
from counting.model import (
    AccountCount,
    AccountKey,
    CustomerCount,
    CustomerKey,
    Event,
    Rejection,
)
from counting.seeds import Seed, absorbed_keys

# tuple.__new__ builds the NamedTuples in C (their own __new__ is Python code)
_new: Any = tuple.__new__
_floor = math.floor

# the customers of a group (customer_id -> count) and its facets ((k, v) -> [count, customers])
Group = tuple[dict[str, int], dict[tuple[str, str], list[Any]]]


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
        # the Dedup rule inline (a method call per event is a tenth of the cost of counting it)
        self._seen: set[str] | None = set() if dedup else None
        # (company, statistic, hour) -> its Group
        self._groups: dict[tuple[str, str, str], Group] = {}
        # (company, statistic, zone, 15-minute block) -> the Group of the block's hour
        self._by_block: dict[tuple[str, str, str, int], Group] = {}
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.events = 0
        # account key -> the customers seeds marked as counted there (`absorb`)
        self._seeded: dict[tuple[str, ...], set[str]] = {}
        self.seeds = 0

    def absorb(self, seed: Seed) -> None:
        """A seed record (`counting.seeds`): its customer is already counted unique under
        its keys and their coarser ones (`absorbed_keys`), so events of that customer under
        them add to `count` and never to `uniques`; the seed itself counts nothing (a key
        that only seeds name has no counter). As the jobs do, seeds are taken to come before
        the events (the hand-over absorbs them before the live bridge starts)."""
        self.seeds += 1
        customer = seed.customer_id
        for key in absorbed_keys(seed.keys):
            seen = self._seeded.get(key)
            if seen is None:
                self._seeded[key] = {customer}
            else:
                seen.add(customer)

    def _uniques(self, key: tuple[str, ...], seen: Any) -> int:
        """The distinct customers of a key's events that no seed marked there."""
        seeded = self._seeded.get(key)
        return len(seen) - len(seeded.intersection(seen)) if seeded else len(seen)

    def add_raw(self, raw: bytes | str | dict[str, object]) -> Rejection | None:
        """Validate and count one delivery; returns its Rejection when it is invalid."""
        parsed = parse_event(raw)
        if type(parsed) is Rejection:
            self.rejected[parsed.reason.value] += 1
            return parsed
        self.add(parsed)  # type: ignore[arg-type]
        return None

    def add(self, event: Event) -> bool:
        """Count one valid event; False when it is a duplicate (counted nowhere)."""
        event_id, company, customer, statistic, ts, tz, facets = event
        seen = self._seen
        if seen is not None:
            if event_id in seen:
                self.duplicates += 1
                return False
            seen.add(event_id)
        self.events += 1
        block = _floor(ts) // BLOCK_S
        group = self._by_block.get((company, statistic, tz, block))
        if group is None:
            group = self._group(company, statistic, tz, ts, block)
        customers, by_facet = group
        customers[customer] = customers.get(customer, 0) + 1
        for facet in facets:
            entry = by_facet.get(facet)
            if entry is None:
                by_facet[facet] = [1, {customer}]
            else:
                entry[0] += 1
                entry[1].add(customer)
        return True

    def _group(self, company: str, statistic: str, tz: str, ts: float, block: int) -> Group:
        labels = block_labels(block, tz)
        hour = (labels or bucket_labels(ts, tz))[0]
        group = self._groups.get((company, statistic, hour))
        if group is None:
            group = self._groups[(company, statistic, hour)] = ({}, {})
        if labels is not None:  # a block whose seconds all share one hour
            self._by_block[(company, statistic, tz, block)] = group
        return group

    def account(self) -> Iterator[AccountCount]:
        """Every account counter (hour, day, month), with its count and uniques."""
        # day key -> [count, customer collections of its hours]; the customers of a day are
        # then the union of those, and the customers of a month the union of its days'
        # without seeds (the usual case: no key built for it) a key's uniques are its
        # distinct customers
        seeded = bool(self._seeded)
        uniques = self._uniques
        days: dict[tuple[str, ...], list[Any]] = {}
        rkey: tuple[str, ...]
        for (company, statistic, hour), (customers, by_facet) in self._groups.items():
            day = hour[:DATE_WIDTH]
            total = ((TOTAL, (sum(customers.values()), customers)),)
            for (facet, value), (count, seen) in chain(total, by_facet.items()):
                yield _new(
                    AccountCount,
                    (
                        _new(AccountKey, (company, statistic, "hour", hour, facet, value)),
                        count,
                        uniques((company, statistic, "hour", hour, facet, value), seen)
                        if seeded
                        else len(seen),
                    ),
                )
                rkey = (company, statistic, "day", day, facet, value)
                entry = days.get(rkey)
                if entry is None:
                    days[rkey] = [count, [seen]]
                else:
                    entry[0] += count
                    entry[1].append(seen)
        months: dict[tuple[str, ...], list[Any]] = {}
        mkey: tuple[str, ...]
        for rkey, (count, parts) in days.items():
            seen = parts[0] if len(parts) == 1 else set().union(*parts)
            n = uniques(rkey, seen) if seeded else len(seen)
            yield _new(AccountCount, (_new(AccountKey, rkey), count, n))
            company, statistic, _, day, facet, value = rkey
            mkey = (company, statistic, "month", day[:MONTH_WIDTH], facet, value)
            entry = months.get(mkey)
            if entry is None:
                months[mkey] = [count, [seen]]
            else:
                entry[0] += count
                entry[1].append(seen)
        days.clear()
        for mkey, (count, parts) in months.items():
            seen = parts[0] if len(parts) == 1 else set().union(*parts)
            n = uniques(mkey, seen) if seeded else len(seen)
            yield _new(AccountCount, (_new(AccountKey, mkey), count, n))

    def customer(self) -> Iterator[CustomerCount]:
        """Every customer counter (hour, day, month), with its count."""
        days: dict[tuple[str, ...], int] = {}
        rkey: tuple[str, ...]
        for (company, statistic, hour), (customers, _) in self._groups.items():
            day = hour[:DATE_WIDTH]
            for customer, count in customers.items():
                yield _new(
                    CustomerCount,
                    (_new(CustomerKey, (company, customer, statistic, "hour", hour)), count),
                )
                rkey = (company, customer, statistic, "day", day)
                days[rkey] = days.get(rkey, 0) + count
        months: dict[tuple[str, ...], int] = {}
        for rkey, count in days.items():
            yield _new(CustomerCount, (_new(CustomerKey, rkey), count))
            mkey = (*rkey[:3], "month", rkey[4][:MONTH_WIDTH])
            months[mkey] = months.get(mkey, 0) + count
        for mkey, count in months.items():
            yield _new(CustomerCount, (_new(CustomerKey, mkey), count))


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
