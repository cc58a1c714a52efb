"""Reading and writing a count store: thin, prepared statements only, bounded concurrency.

Writers index every (date, company, statistic) and (date, company, customer, statistic)
they touch *before* writing the counts, so a crash between the two can only make compare
read a key that has no counts yet, never hide counts from it.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType

from counting import (
    DATE_WIDTH,
    AccountCount,
    AccountKey,
    CustomerCount,
    CustomerKey,
    bucket_date,
    date_label_range,
    month_label_range,
    month_of,
)
from settings import CassandraSettings
from storage.cassandra import Prepared
from storage.rows import ACCOUNT_COLUMNS, CUSTOMER_COLUMNS
from storage.schema import SHARDS, STORES, keyspace_of

_INDEX_CACHE_MAX = 200_000

Request = tuple[Any, tuple[Any, ...]]  # (prepared statement, parameters)
BATCH_ROWS = 30  # statements per batch (well under the batch size warning)


# The partition period of a bucket is its first PERIOD_WIDTH[resolution] characters: its year
# for month buckets, else its month.
PERIOD_WIDTH = {"hour": 7, "day": 7, "month": 4}


def period_of(resolution: str, bucket: str) -> str:
    return bucket[: PERIOD_WIDTH[resolution]]


# Key columns in the order the write statements bind them (after the measures).
_KEY = {
    "account": ("company_id", "statistic_id", "period", "bucket", "resolution", "facet", "value"),
    "customer": ("company_id", "customer_id", "period", "statistic_id", "bucket", "resolution"),
}
_MEASURES = {"account": ("count", "uniques"), "customer": ("count",)}
# Index rows: (date, shard, *fields); the shard hashes the first SHARD_FIELDS of them.
_INDEX_FIELDS = {
    "account": ("company_id", "statistic_id"),
    "customer": ("company_id", "customer_id", "statistic_id"),
}
_SHARD_FIELDS = {"account": 1, "customer": 2}
# Only hour counters are indexed, each under its date (`counting.bucket_date`: the label's
# first DATE_WIDTH characters); a date's day counters have the keys of its hours', and its
# month counter is read with the date (`date_slices`), so neither needs an entry of its own.
INDEX_RESOLUTION = "hour"


def _update_cql(ks: str, kind: str, level: str) -> str:
    table = f"{ks}.{level}_counts"
    where = " AND ".join(f"{c} = ?" for c in _KEY[level])
    sets = ", ".join(
        f"{m} = {m} + ?" if kind == "counter" else f"{m} = ?" for m in _MEASURES[level]
    )
    return f"UPDATE {table} SET {sets} WHERE {where}"


def _index_cql(ks: str, level: str) -> str:
    columns = ", ".join(("date", "shard", *_INDEX_FIELDS[level]))
    marks = ", ".join("?" * (2 + len(_INDEX_FIELDS[level])))
    return f"INSERT INTO {ks}.{level}_keys_by_date ({columns}) VALUES ({marks})"


@dataclass(frozen=True, slots=True)
class SinkLayout:
    """How a writer outside this module (the Abacus jobs' JVM sink) adds increments to a
    counter store the way CounterStore does: `update` binds the measures, then the key
    fields; the first `partition_keys` key fields form the partition; an hour row's index
    entry is (its local date, shard, the key fields at `index_fields`), its shard
    `shard_of` the first `shard_fields` of those, mod `shards`. Rows of resolution
    `index_resolution` alone are indexed; a row's date is its bucket label's first
    `date_width` characters (`counting.bucket_date`)."""

    update: str
    index: str
    keys: tuple[str, ...]
    measures: tuple[str, ...]
    partition_keys: int
    index_fields: tuple[int, ...]
    shard_fields: tuple[int, ...]
    shards: int
    index_resolution: str
    date_width: int


def sink_layout(settings: CassandraSettings, store: str, level: str) -> SinkLayout:
    if STORES[store].kind != "counter":
        raise ValueError(f"store {store!r} does not hold counters")
    ks = keyspace_of(settings, store)
    keys = _KEY[level]
    return SinkLayout(
        update=_update_cql(ks, "counter", level),
        index=_index_cql(ks, level),
        keys=keys,
        measures=_MEASURES[level],
        partition_keys=3,
        index_fields=tuple(keys.index(f) for f in _INDEX_FIELDS[level]),
        shard_fields=tuple(range(_SHARD_FIELDS[level])),
        shards=SHARDS,
        index_resolution=INDEX_RESOLUTION,
        date_width=DATE_WIDTH,
    )


def shard_of(*parts: str) -> int:
    return zlib.crc32("\x1f".join(parts).encode("utf-8")) % SHARDS


def batches(
    rows: Iterable[tuple[Any, ...]],
    partition: slice,
    batch_partitions: int,
    batch_rows: int = BATCH_ROWS,
) -> list[list[tuple[Any, ...]]]:
    """Rows grouped into write batches: by partition (`row[partition]`, partitions in the
    order first seen), a batch holds up to `batch_rows` rows spanning up to
    `batch_partitions` partitions, a partition's rows staying together when they fit. The
    JVM sink batches the same way (`abacus.sink.Sums.batches`, checked by its JUnit test)."""
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        groups[row[partition]].append(row)
    out: list[list[tuple[Any, ...]]] = []
    pending: list[tuple[Any, ...]] = []
    partitions = 0
    for group in groups.values():
        for i in range(0, len(group), batch_rows):
            chunk = group[i : i + batch_rows]
            if len(pending) + len(chunk) > batch_rows or partitions >= batch_partitions:
                if pending:
                    out.append(pending)
                pending = []
                partitions = 0
            pending.extend(chunk)
            partitions += 1
    if pending:
        out.append(pending)
    return out


def date_slice(date: str) -> tuple[str, str]:
    """Bucket bounds [low, high) that select a date's day bucket and its hour buckets."""
    return date_label_range(date)


def date_slices(date: str, include_month: bool = False) -> list[tuple[str, str, str]]:
    """(period, low, high) of each partition slice holding a date's counters: its day and
    hour buckets, and with include_month its month's bucket, in bucket order (a month's
    bucket "YYYY-MM" sorts before its dates')."""
    month = month_of(date)
    months = [(period_of("month", month), *month_label_range(month))] if include_month else []
    return [*months, (period_of("day", date), *date_label_range(date))]


class CounterStore:
    """One count store (legacy, shadow, serving, m2) in Cassandra."""

    def __init__(self, prepared: Prepared, settings: CassandraSettings, name: str) -> None:
        if name not in STORES:
            raise ValueError(f"unknown store {name!r}; known: {', '.join(STORES)}")
        self.name, self.kind = name, STORES[name].kind
        self._session, self._concurrency = prepared.session, settings.write_concurrency
        self._batch_partitions = settings.batch_partitions
        ks = keyspace_of(settings, name)
        self._account = prepared(_update_cql(ks, self.kind, "account"))
        self._customer = prepared(_update_cql(ks, self.kind, "customer"))
        self._account_index = prepared(_index_cql(ks, "account"))
        self._customer_index = prepared(_index_cql(ks, "customer"))
        cols = ", ".join(ACCOUNT_COLUMNS)
        self._read_account = prepared(
            f"SELECT {cols} FROM {ks}.account_counts WHERE company_id = ? AND statistic_id = ? "
            "AND period = ? AND bucket >= ? AND bucket < ?"
        )
        self._read_customer = prepared(
            f"SELECT bucket, resolution, count FROM {ks}.customer_counts WHERE company_id = ? "
            "AND customer_id = ? AND period = ? AND statistic_id = ? AND bucket >= ? "
            "AND bucket < ?"
        )
        self._read_customers = prepared(
            f"SELECT {', '.join(CUSTOMER_COLUMNS)} FROM {ks}.customer_counts "
            "WHERE company_id = ? AND customer_id IN ? AND period = ? AND statistic_id IN ? "
            "AND bucket >= ? AND bucket < ?"
        )
        self._read_account_keys = prepared(
            f"SELECT {cols} FROM {ks}.account_counts WHERE company_id = ? AND statistic_id = ? "
            "AND period = ? AND (bucket, resolution, facet, value) IN ?"
        )
        self._read_customer_keys = prepared(
            f"SELECT {', '.join(CUSTOMER_COLUMNS)} FROM {ks}.customer_counts "
            "WHERE company_id = ? AND customer_id = ? AND period = ? "
            "AND (statistic_id, bucket, resolution) IN ?"
        )
        self._account_keys = prepared(
            f"SELECT company_id, statistic_id FROM {ks}.account_keys_by_date "
            "WHERE date = ? AND shard = ?"
        )
        self._customer_keys = prepared(
            f"SELECT company_id, customer_id, statistic_id FROM {ks}.customer_keys_by_date "
            "WHERE date = ? AND shard = ?"
        )
        self._scan_account = prepared(
            f"SELECT company_id, statistic_id, {cols} FROM {ks}.account_counts"
        )
        self._scan_customer = prepared(
            f"SELECT company_id, customer_id, statistic_id, bucket, resolution, count "
            f"FROM {ks}.customer_counts"
        )
        self._indexed: set[tuple[str, ...]] = set()
        self._batch_type = BatchType.COUNTER if self.kind == "counter" else BatchType.UNLOGGED

    # -- writes ---------------------------------------------------------------------------

    def _run(
        self,
        statement: Any,
        params: Iterable[tuple[Any, ...]],
        partition: slice,
        batch_type: BatchType | None = None,
    ) -> None:
        """Execute statement for every row of params in batches of up to `BATCH_ROWS` rows
        spanning up to `batch_partitions` partitions (a partition's rows stay together when
        they fit), `write_concurrency` requests in flight: one request per batch instead of
        one per row."""
        requests: list[tuple[Any, Any]] = []
        for pending in batches(params, partition, self._batch_partitions):
            if len(pending) == 1:
                requests.append((statement, pending[0]))
            else:
                batch = BatchStatement(batch_type=batch_type or self._batch_type)
                for row in pending:
                    batch.add(statement, row)
                requests.append((batch, None))
        if requests:
            execute_concurrent(
                self._session, requests, concurrency=self._concurrency, raise_on_first_error=True
            )

    def _index(self, rows: Iterable[tuple[str, ...]], statement: Any) -> None:
        """Index rows are (date, company, [customer,] statistic); the shard spreads a date
        over SHARDS partitions by company (account) or company and customer (customer)."""
        new = [r for r in dict.fromkeys(rows) if r not in self._indexed]
        if not new:
            return
        self._run(
            statement,
            [(r[0], shard_of(*r[1:-1]), *r[1:]) for r in new],
            slice(0, 2),
            BatchType.UNLOGGED,
        )
        if len(self._indexed) > _INDEX_CACHE_MAX:
            self._indexed.clear()
        self._indexed.update(new)

    def write_account(self, rows: Iterable[tuple[AccountKey, int, int]]) -> None:
        """Counter stores add (count, uniques) increments; bigint stores set final values."""
        rows = list(rows)
        self._index(
            (
                (bucket_date(k.bucket), k.company_id, k.statistic_id)
                for k, _, _ in rows
                if k.resolution == INDEX_RESOLUTION
            ),
            self._account_index,
        )
        self._run(
            self._account,
            [
                (
                    count,
                    uniques,
                    k.company_id,
                    k.statistic_id,
                    period_of(k.resolution, k.bucket),
                    k.bucket,
                    k.resolution,
                    k.facet,
                    k.value,
                )
                for k, count, uniques in rows
            ],
            slice(2, 5),
        )

    def write_customer(self, rows: Iterable[tuple[CustomerKey, int]]) -> None:
        rows = list(rows)
        self._index(
            (
                (bucket_date(k.bucket), k.company_id, k.customer_id, k.statistic_id)
                for k, _ in rows
                if k.resolution == INDEX_RESOLUTION
            ),
            self._customer_index,
        )
        self._run(
            self._customer,
            [
                (
                    count,
                    k.company_id,
                    k.customer_id,
                    period_of(k.resolution, k.bucket),
                    k.statistic_id,
                    k.bucket,
                    k.resolution,
                )
                for k, count in rows
            ],
            slice(1, 4),
        )

    # -- reads ----------------------------------------------------------------------------

    # Statements for concurrent readers (compare runs them many at a time): each method
    # returns (prepared statement, parameters) requests; rows are plain column tuples.

    def index_requests(self, date: str, level: str) -> list[Request]:
        """The date's index, one request per shard: rows (company, statistic) at account
        level, (company, customer, statistic) at customer level."""
        statement = self._account_keys if level == "account" else self._customer_keys
        return [(statement, (date, shard)) for shard in range(SHARDS)]

    def account_requests(
        self, company: str, statistic: str, date: str, include_month: bool = False
    ) -> list[Request]:
        """The counters of one (company, statistic) on the date: rows `ACCOUNT_COLUMNS`, in
        clustering order (bucket, resolution, facet, value)."""
        return [
            (self._read_account, (company, statistic, period, low, high))
            for period, low, high in date_slices(date, include_month)
        ]

    def customer_requests(
        self,
        company: str,
        customers: list[str],
        statistics: list[str],
        date: str,
        include_month: bool = False,
    ) -> list[Request]:
        """The counters of every (customer, statistic) pair of one company on the date, in
        one query per slice (the pairs' partitions read together): rows `CUSTOMER_COLUMNS`,
        each partition's in clustering order (statistic, bucket, resolution)."""
        return [
            (self._read_customers, (company, customers, period, statistics, low, high))
            for period, low, high in date_slices(date, include_month)
        ]

    def key_requests(self, keys: Iterable[AccountKey | CustomerKey]) -> list[Request]:
        """These counters only (a re-read of a few keys): one request per partition, rows
        `ACCOUNT_COLUMNS` or `CUSTOMER_COLUMNS` (absent keys return no row)."""
        parts: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
        for k in keys:
            if isinstance(k, AccountKey):
                parts[
                    ("a", k.company_id, k.statistic_id, period_of(k.resolution, k.bucket))
                ].append((k.bucket, k.resolution, k.facet, k.value))
            else:
                parts[("c", k.company_id, k.customer_id, period_of(k.resolution, k.bucket))].append(
                    (k.statistic_id, k.bucket, k.resolution)
                )
        return [
            (
                self._read_account_keys if part[0] == "a" else self._read_customer_keys,
                (*part[1:], clustering),
            )
            for part, clustering in parts.items()
        ]

    def keys_of_date(self, date: str, level: str) -> Iterator[tuple[str, ...]]:
        for statement, params in self.index_requests(date, level):
            for row in self._session.execute(statement, params):
                yield tuple(row)

    def read_date(
        self, date: str, level: str, include_month: bool = False
    ) -> Iterator[AccountCount | CustomerCount]:
        """Every counter of one local date: its day and hour buckets (and its month's)."""
        for ids in self.keys_of_date(date, level):
            for period, lo, hi in date_slices(date, include_month):
                if level == "account":
                    company, statistic = ids
                    for r in self._session.execute(
                        self._read_account, (company, statistic, period, lo, hi)
                    ):
                        key = AccountKey(
                            company, statistic, r.resolution, r.bucket, r.facet, r.value
                        )
                        yield AccountCount(key, r.count or 0, r.uniques or 0)
                else:
                    company, customer, statistic = ids
                    for r in self._session.execute(
                        self._read_customer, (company, customer, period, statistic, lo, hi)
                    ):
                        ckey = CustomerKey(company, customer, statistic, r.resolution, r.bucket)
                        yield CustomerCount(ckey, r.count or 0)

    def read_account_range(
        self, company: str, statistic: str, resolution: str, first: str, last: str
    ) -> Iterator[AccountCount]:
        """The serving query: one partition per period spanned by [first, last]."""
        periods = sorted({period_of(resolution, first), period_of(resolution, last)})
        if resolution != "month" and periods[0] != periods[-1]:
            periods = _months_between(periods[0], periods[-1])
        for period in periods:
            for r in self._session.execute(
                self._read_account, (company, statistic, period, first, last + "\x00")
            ):
                if r.resolution == resolution:
                    key = AccountKey(company, statistic, resolution, r.bucket, r.facet, r.value)
                    yield AccountCount(key, r.count or 0, r.uniques or 0)

    def scan(self, level: str) -> Iterator[AccountCount | CustomerCount]:
        """Every counter of the store (a full table scan: for dumps of small stores)."""
        if level == "account":
            for r in self._session.execute(self._scan_account):
                key = AccountKey(
                    r.company_id, r.statistic_id, r.resolution, r.bucket, r.facet, r.value
                )
                yield AccountCount(key, r.count or 0, r.uniques or 0)
        else:
            for r in self._session.execute(self._scan_customer):
                ckey = CustomerKey(
                    r.company_id, r.customer_id, r.statistic_id, r.resolution, r.bucket
                )
                yield CustomerCount(ckey, r.count or 0)


def _months_between(first: str, last: str) -> list[str]:
    year, month = int(first[:4]), int(first[5:7])
    out = []
    while f"{year:04d}-{month:02d}" <= last:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out
