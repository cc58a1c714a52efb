"""The product's queries, validated, and how they read a count store.

Two queries, both over one resolution's buckets `from..to` (labels, inclusive):
- account counts: (company, statistic), the statistic's total (counting's `TOTAL` facet)
  or one facet/value: count and uniques per bucket;
- customer counts: (company, customer, statistic): count per bucket.

A query names its counters exactly (every bucket label of the range, `buckets_between`),
and `CounterStore.key_requests` reads them: one prepared statement per partition (storage
decides the partitions), at most `KEYS_PER_REQUEST` keys each. The answer lists every
bucket of the range, zero where no counter exists, so two stores' answers compare whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from counting import RESOLUTIONS, TOTAL, AccountKey, CustomerKey
from counting.events import ID_FIELDS, MAX_PROPERTY_KEY_CHARS
from counting.facets import MAX_FACET_VALUE_CHARS
from storage import CounterStore, Request, Row, key_of_row, row_value

MAX_BUCKETS = 1000  # buckets one query may span
MAX_SPAN_DAYS = 3 * 366  # and at most about three years, whatever the resolution
KEYS_PER_REQUEST = 100  # counters one statement reads (a multi-column IN)

_LABEL = {
    "hour": (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}"), "%Y-%m-%dT%H", "YYYY-MM-DDTHH"),
    "day": (re.compile(r"\d{4}-\d{2}-\d{2}"), "%Y-%m-%d", "YYYY-MM-DD"),
    "month": (re.compile(r"\d{4}-\d{2}"), "%Y-%m", "YYYY-MM"),
}


def _time_of(label: str) -> datetime:
    """The UTC datetime of a label of the right shape (`_LABEL`'s pattern; strptime is ten
    times slower); ValueError if it names no real hour, day or month."""
    day = int(label[8:10]) if len(label) >= 10 else 1
    hour = int(label[11:13]) if len(label) == 13 else 0
    return datetime(int(label[:4]), int(label[5:7]), day, hour, tzinfo=UTC)


class BadParameter(ValueError):
    """A query parameter is missing or invalid: the message says which and why (HTTP 400,
    exit 2 in the CLI)."""


@dataclass(frozen=True, slots=True)
class Query:
    """A validated query. `customer` set: customer counts; else account counts of
    (facet, value) (TOTAL: the statistic's total)."""

    company: str
    statistic: str
    resolution: str
    first: str
    last: str
    facet: str = TOTAL[0]
    value: str = TOTAL[1]
    customer: str | None = None

    @property
    def level(self) -> str:
        return "account" if self.customer is None else "customer"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level, "company": self.company}
        if self.customer is not None:
            out["customer"] = self.customer
        out |= {"statistic": self.statistic, "resolution": self.resolution}
        out |= {"from": self.first, "to": self.last}
        if self.customer is None:
            out |= {"facet": self.facet, "value": self.value}
        return out


def _id(name: str, value: str | None, limit: int) -> str:
    if value is None:
        raise BadParameter(f"missing parameter: {name}")
    if not 0 < len(value) <= limit:
        raise BadParameter(f"{name} must be 1..{limit} characters (got {len(value)})")
    return value


def _label_time(resolution: str, name: str, label: str | None) -> datetime:
    if label is None:
        raise BadParameter(f"missing parameter: {name}")
    pattern, _, shown = _LABEL[resolution]
    if len(label) > 16 or not pattern.fullmatch(label):
        article = "an" if resolution == "hour" else "a"
        raise BadParameter(
            f"{name} must be {article} {resolution} label {shown} (got {label[:32]!r})"
        )
    try:
        return _time_of(label)
    except ValueError:
        raise BadParameter(f"{name} is not a real {resolution}: {label!r}") from None


def _months(first: datetime, last: datetime) -> int:
    return (last.year - first.year) * 12 + last.month - first.month


def bucket_count(resolution: str, first: datetime, last: datetime) -> int:
    if resolution == "month":
        return _months(first, last) + 1
    step = timedelta(hours=1) if resolution == "hour" else timedelta(days=1)
    return (last - first) // step + 1


def parse_query(
    company: str | None,
    statistic: str | None,
    resolution: str | None,
    first: str | None,
    last: str | None,
    facet: str | None = None,
    value: str | None = None,
    customer: str | None = None,
) -> Query:
    """The query these parameters name, or BadParameter saying the first thing wrong."""
    company = _id("company", company, ID_FIELDS["company_id"])
    statistic = _id("statistic", statistic, ID_FIELDS["statistic_id"])
    if resolution is None:
        raise BadParameter("missing parameter: resolution")
    if resolution not in RESOLUTIONS:
        raise BadParameter(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    start = _label_time(resolution, "from", first)
    end = _label_time(resolution, "to", last)
    assert first is not None and last is not None  # checked by _label_time
    if end < start:
        raise BadParameter(f"from ({first}) is after to ({last})")
    count = bucket_count(resolution, start, end)
    if count > MAX_BUCKETS:
        raise BadParameter(f"the range spans {count} {resolution}s; at most {MAX_BUCKETS}")
    if (end - start).days > MAX_SPAN_DAYS:
        raise BadParameter(f"the range spans more than {MAX_SPAN_DAYS // 366} years")
    if customer is not None:
        if facet is not None or value is not None:
            raise BadParameter("facet and value apply to account counts, not customer counts")
        customer = _id("customer", customer, ID_FIELDS["customer_id"])
        return Query(company, statistic, resolution, first, last, customer=customer)
    if (facet is None) != (value is None):
        raise BadParameter("facet and value go together: give both or neither")
    if facet is None or value is None:
        return Query(company, statistic, resolution, first, last)
    facet = _id("facet", facet, MAX_PROPERTY_KEY_CHARS)
    if len(value) > MAX_FACET_VALUE_CHARS:
        raise BadParameter(f"value must be at most {MAX_FACET_VALUE_CHARS} characters")
    return Query(company, statistic, resolution, first, last, facet, value)


def buckets_between(resolution: str, first: str, last: str) -> list[str]:
    """Every label of the resolution from first to last, inclusive, in order. Local labels:
    a day has 24 hour labels here; a skipped hour (a spring-forward change) has no counter
    and reads as zero."""
    if first == last:
        return [first]
    _, fmt, _ = _LABEL[resolution]
    start, end = _time_of(first), _time_of(last)
    if resolution == "month":
        out = []
        year, month = start.year, start.month
        for _ in range(_months(start, end) + 1):
            out.append(f"{year:04d}-{month:02d}")
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return out
    step = timedelta(hours=1) if resolution == "hour" else timedelta(days=1)
    return [(start + i * step).strftime(fmt) for i in range(bucket_count(resolution, start, end))]


def keys_of(query: Query) -> list[AccountKey] | list[CustomerKey]:
    """The counters the query reads, one per bucket, in bucket order."""
    labels = buckets_between(query.resolution, query.first, query.last)
    if query.customer is None:
        return [
            AccountKey(
                query.company, query.statistic, query.resolution, b, query.facet, query.value
            )
            for b in labels
        ]
    return [
        CustomerKey(query.company, query.customer, query.statistic, query.resolution, b)
        for b in labels
    ]


def requests_of(store: CounterStore, query: Query) -> list[Request]:
    """The store's prepared statements reading the query's counters."""
    keys = keys_of(query)
    out: list[Request] = []
    for i in range(0, len(keys), KEYS_PER_REQUEST):
        out += store.key_requests(keys[i : i + KEYS_PER_REQUEST])
    return out


def answer_of(query: Query, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Every bucket of the query with its count (and uniques at account level), in bucket
    order, from the rows its requests returned (absent counters are zero)."""
    ids = (query.company, query.statistic) if query.customer is None else (query.company,)
    found: dict[str, tuple[int, int]] = {}
    for row in rows:
        key = key_of_row(query.level, ids, row)
        found[key.bucket] = row_value(row)
    out: list[dict[str, Any]] = []
    for bucket in buckets_between(query.resolution, query.first, query.last):
        count, uniques = found.get(bucket, (0, 0))
        entry: dict[str, Any] = {"bucket": bucket, "count": count}
        if query.customer is None:
            entry["uniques"] = uniques
        out.append(entry)
    return out


def read(session: Any, store: CounterStore, query: Query) -> list[dict[str, Any]]:
    """The query's answer from one store (synchronous: the CLI and the experiment)."""
    rows: list[Row] = []
    for statement, params in requests_of(store, query):
        rows += session.execute(statement, params)
    return answer_of(query, rows)
