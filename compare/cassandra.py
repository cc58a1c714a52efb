"""Reading a count store for an audit: the date's units from its per-date index, then each
unit's counters by many concurrent async queries (a bounded in-flight window, a rate limit
in queries per second, every page of a large partition followed).

The CQL is the store's own (storage.CounterStore's read requests); this module only runs it
concurrently and hands each unit its rows (plain tuples: compare.diff.diff_rows compares
them without building a key object per counter).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from cassandra.cluster import ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from compare.diff import Key, Unit
from settings import CassandraSettings
from storage import CounterStore, Prepared, Request, Row
from storage.rows import C_CUSTOMER, C_STATISTIC

PROFILE = "compare"


def add_profile(session: Session, settings: CassandraSettings) -> None:
    """A read profile returning plain tuples (the cheapest rows the driver makes)."""
    if PROFILE in session.cluster.profile_manager.profiles:
        return
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc))
    session.cluster.add_execution_profile(
        PROFILE,
        ExecutionProfile(
            load_balancing_policy=policy,
            row_factory=tuple_factory,
            request_timeout=settings.request_timeout_s,
        ),
    )


class RateLimiter:
    """At most `rate` acquisitions per second (0: unlimited), smoothed over a short burst."""

    def __init__(self, rate: float, burst_s: float = 0.1) -> None:
        self.rate = rate
        self._capacity = max(1.0, rate * burst_s)
        self._tokens = self._capacity
        self._last = time.monotonic()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            time.sleep((1 - self._tokens) / self.rate)


@dataclass(slots=True)
class _FetchState:
    """A fetch's requests still in flight and its first lasting error (under its lock)."""

    pending: int
    error: BaseException | None = None


class Fetcher:
    """Runs many queries with at most `concurrency` in flight; returns every row of each."""

    def __init__(
        self,
        session: Session,
        concurrency: int = 64,
        max_rps: float = 0,
        fetch_size: int = 5000,
        retries: int = 2,
    ) -> None:
        self.session, self.concurrency, self.fetch_size = session, concurrency, fetch_size
        self.retries = retries
        self.limiter = RateLimiter(max_rps)
        self.queries = 0
        self._launch = threading.Lock()  # fetch may run in two threads (audit read-ahead)

    def fetch(self, requests: Sequence[tuple[Any, tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
        """Rows of each (prepared statement, params), in request order; raises the first
        error that persists after retries."""
        results: list[list[tuple[Any, ...]]] = [[] for _ in requests]
        window = threading.Semaphore(self.concurrency)
        lock = threading.Lock()
        done = threading.Event()
        state = _FetchState(pending=len(requests))
        if not requests:
            return results

        def finish(i: int) -> None:
            window.release()
            with lock:
                state.pending -= 1
                if state.pending == 0:
                    done.set()

        def start(i: int, attempt: int) -> None:
            results[i] = []
            statement, params = requests[i]
            bound = statement.bind(params)
            bound.fetch_size = self.fetch_size
            future = self.session.execute_async(bound, execution_profile=PROFILE)
            future.add_callbacks(
                on_page, on_error, callback_args=(future, i), errback_args=(i, attempt)
            )

        def on_page(rows: list[tuple[Any, ...]], future: Any, i: int) -> None:
            results[i].extend(rows)
            if future.has_more_pages:
                future.start_fetching_next_page()
            else:
                finish(i)

        def on_error(exc: BaseException, i: int, attempt: int) -> None:
            if attempt < self.retries:
                try:
                    start(i, attempt + 1)
                    return
                except Exception as again:
                    exc = again
            with lock:
                if state.error is None:
                    state.error = exc
            finish(i)

        for i in range(len(requests)):
            window.acquire()
            if state.error is not None:
                window.release()
                with lock:
                    state.pending -= len(requests) - i
                    if state.pending == 0:
                        done.set()
                break
            with self._launch:
                self.limiter.acquire()
                self.queries += 1
            start(i, 0)
        done.wait()
        if state.error is not None:
            raise state.error
        return results


class StoreReader:
    """One count store as an audit reads it: the store's own read requests
    (storage.CounterStore), run concurrently, rows kept as the driver's tuples."""

    def __init__(
        self,
        prepared: Prepared,
        settings: CassandraSettings,
        name: str,
        fetcher: Fetcher,
        in_size: int = 64,
    ) -> None:
        self.name, self.fetcher, self.in_size = name, fetcher, in_size
        self.store = CounterStore(prepared, settings, name)

    def units(self, date: str, levels: Iterable[str]) -> set[Unit]:
        """Every unit the store's writers indexed for the date (all shards, in parallel)."""
        requests: list[Request] = []
        tags: list[str] = []
        for level in levels:
            reqs = self.store.index_requests(date, level)
            requests += reqs
            tags += [level] * len(reqs)
        out: set[Unit] = set()
        for level, rows in zip(tags, self.fetcher.fetch(requests), strict=True):
            out.update((level, tuple(row)) for row in rows)
        return out

    def requests(
        self, units: Sequence[Unit], date: str, include_month: bool
    ) -> tuple[list[Request], list[Decoder]]:
        """The queries that read the units, and where the rows of each go.

        Customer partitions hold a few rows per statistic: one query per unit would cost
        more in round trips than in rows, so the customers of a company are read `in_size`
        at a time, with every statistic of those customers' units in the same query.
        """
        requests: list[Request] = []
        decoders: list[Decoder] = []
        customers: dict[str, dict[str, set[str]]] = defaultdict(dict)
        for unit in units:
            level, ids = unit
            if level == "account":
                reqs = self.store.account_requests(ids[0], ids[1], date, include_month)
                requests += reqs
                decoders += [partial(_to_unit, unit)] * len(reqs)
            else:
                company, customer, statistic = ids
                customers[company].setdefault(customer, set()).add(statistic)
        for company, stats_of in customers.items():
            names = list(stats_of)
            for i in range(0, len(names), self.in_size):
                batch = names[i : i + self.in_size]
                statistics = sorted(set().union(*(stats_of[c] for c in batch)))
                reqs = self.store.customer_requests(company, batch, statistics, date, include_month)
                requests += reqs
                decoders += [partial(_to_customer_units, company)] * len(reqs)
        return requests, decoders


Rows = list[Row]
Decoder = Callable[[Rows, dict[Unit, Rows]], None]


def _to_unit(unit: Unit, rows: Rows, side: dict[Unit, Rows]) -> None:
    side[unit].extend(rows)


def _to_customer_units(company: str, rows: Rows, side: dict[Unit, Rows]) -> None:
    """Rows of several customer units; a pair of the query that is no unit of the chunk
    (its customer's other statistics, or a unit of the next chunk) is dropped."""
    for row in rows:
        found = side.get(("customer", (company, row[C_CUSTOMER], row[C_STATISTIC])))
        if found is not None:
            found.append(row)


def read_stores(
    readers: Sequence[StoreReader], units: Sequence[Unit], date: str, include_month: bool
) -> list[dict[Unit, Rows]]:
    """Every counter row of each unit on the date in each store, in each partition's
    clustering order (a customer unit's rows are its partition's): the queries of all the
    stores share one fetch, so they overlap."""
    return _read(readers, units, lambda reader: reader.requests(units, date, include_month))


def read_keys(
    readers: Sequence[StoreReader], keys: dict[Unit, list[Key]]
) -> list[dict[Unit, Rows]]:
    """The rows of these keys only (grouped by unit) in each store: a settle re-read."""

    def requests(reader: StoreReader) -> tuple[list[Request], list[Decoder]]:
        reqs: list[Request] = []
        decoders: list[Decoder] = []
        for unit, unit_keys in keys.items():
            found = reader.store.key_requests(unit_keys)
            reqs += found
            decoders += [partial(_to_unit, unit)] * len(found)
        return reqs, decoders

    return _read(readers, list(keys), requests)


def _read(
    readers: Sequence[StoreReader],
    units: Sequence[Unit],
    requests_of: Callable[[StoreReader], tuple[list[Request], list[Decoder]]],
) -> list[dict[Unit, Rows]]:
    requests: list[Request] = []
    owners: list[tuple[int, Decoder]] = []
    for i, reader in enumerate(readers):
        reqs, decoders = requests_of(reader)
        requests += reqs
        owners += [(i, d) for d in decoders]
    out: list[dict[Unit, Rows]] = [{u: [] for u in units} for _ in readers]
    for (i, decoder), rows in zip(owners, readers[0].fetcher.fetch(requests), strict=True):
        decoder(rows, out[i])
    return out
