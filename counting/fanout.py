"""Fan-out: the account and customer counters one event touches (SEMANTICS.md §4)."""

from __future__ import annotations

import json

from counting.buckets import bucket_labels
from counting.model import RESOLUTIONS, AccountKey, CustomerKey, Event

TOTAL: tuple[str, str] = ("", "")  # the facet of the statistic's total


def account_facets(event: Event) -> tuple[tuple[str, str], ...]:
    """The (facet, value) pairs an event counts under: the statistic's total, then each of
    its facets. Its account keys are these at every resolution (`account_keys`)."""
    return (TOTAL, *event.facets)


def account_keys(event: Event) -> list[AccountKey]:
    """3 x (1 + F) keys: every resolution, for the total and each facet."""
    labels = bucket_labels(event.timestamp, event.timezone)
    company, statistic = event.company_id, event.statistic_id
    facets = account_facets(event)
    return [
        AccountKey(company, statistic, resolution, bucket, facet, value)
        for resolution, bucket in zip(RESOLUTIONS, labels, strict=True)
        for facet, value in facets
    ]


def customer_keys(event: Event) -> list[CustomerKey]:
    """3 keys: the customer's statistic at every resolution."""
    labels = bucket_labels(event.timestamp, event.timezone)
    return [
        CustomerKey(event.company_id, event.customer_id, event.statistic_id, resolution, bucket)
        for resolution, bucket in zip(RESOLUTIONS, labels, strict=True)
    ]


def key_id(key: tuple[str, ...]) -> str:
    """A stable, injective text identity of a key (an AccountKey, a CustomerKey or any tuple
    of ids; for Redis keys, set members and sorting): its fields as a compact JSON array, so
    no id or value, whatever characters it holds, can make two keys collide."""
    return json.dumps(key, ensure_ascii=False, separators=(",", ":"))


def account_key_of_id(text: str | bytes) -> AccountKey:
    """The account key whose `key_id` is text."""
    return AccountKey._make(json.loads(text))
