"""The reference counts of an event log (SEMANTICS.md §4, §5): streaming, memory bounded by
the distinct counter keys and event ids, never by the size of the log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from counting.events import parse_event
from counting.fanout import account_keys, customer_keys
from counting.model import AccountCount, AccountKey, CustomerCount, CustomerKey, Event, Rejection


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
        self.account_counts: Counter[AccountKey] = Counter()
        self.account_customers: dict[AccountKey, set[str]] = {}
        self.customer_counts: Counter[CustomerKey] = Counter()
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
        counts, customers = self.account_counts, self.account_customers
        customer = event.customer_id
        for key in account_keys(event):
            counts[key] += 1
            seen = customers.get(key)
            if seen is None:
                customers[key] = {customer}
            else:
                seen.add(customer)
        for ckey in customer_keys(event):
            self.customer_counts[ckey] += 1
        return True

    def account(self) -> Iterator[AccountCount]:
        for key, count in self.account_counts.items():
            yield AccountCount(key, count, len(self.account_customers[key]))

    def customer(self) -> Iterator[CustomerCount]:
        for key, count in self.customer_counts.items():
            yield CustomerCount(key, count)


def recount(lines: Iterable[bytes | str]) -> Recount:
    """The reference counts of an iterable of raw events (e.g. the lines of a JSONL file)."""
    result = Recount()
    for line in lines:
        result.add_raw(line)
    return result
