"""Reading a count store for an audit: the date's units from its per-date index, then each
unit's counters by many concurrent async queries (a bounded in-flight window, a rate limit
in queries per second, every page of a large partition followed).

The CQL is the store's own (storage.CounterStore prepares it); this module only runs it
concurrently and decodes rows into counting's types.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cassandra.cluster import ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from compare.diff import Counted, order
from compare.truth import Unit
from counting import AccountCount, AccountKey, CustomerCount, CustomerKey
from settings import CassandraSettings
from storage import CounterStore, Prepared, date_slice

PROFILE = "compare"
LEVELS = ("account", "customer")


def add_profile(session: Session, settings: CassandraSettings) -> None:
    """A read profile returning plain tuples (the cheapest rows the driver makes)."""
    if PROFILE in session.cluster.profile_manager.profiles:
        return
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc))
    session.cluster.add_execution_profile(PROFILE, ExecutionProfile(
        load_balancing_policy=policy, row_factory=tuple_factory,
        request_timeout=settings.request_timeout_s))


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


class Fetcher:
    """Runs many queries with at most `concurrency` in flight; returns every row of each."""

    def __init__(self, session: Session, concurrency: int = 64, max_rps: float = 0,
                 fetch_size: int = 5000, retries: int = 2) -> None:
        self.session, self.concurrency, self.fetch_size = session, concurrency, fetch_size
        self.retries = retries
        self.limiter = RateLimiter(max_rps)
        self.queries = 0

    def fetch(self, requests: Sequence[tuple[Any, tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
        """Rows of each (prepared statement, params), in request order; raises the first
        error that persists after retries."""
        results: list[list[tuple[Any, ...]]] = [[] for _ in requests]
        window = threading.Semaphore(self.concurrency)
        lock = threading.Lock()
        done = threading.Event()
        state = {"pending": len(requests), "error": None}
        if not requests:
            return results

        def finish(i: int) -> None:
            window.release()
            with lock:
                state["pending"] -= 1
                if state["pending"] == 0:
                    done.set()

        def start(i: int, attempt: int) -> None:
            results[i] = []
            statement, params = requests[i]
            bound = statement.bind(params)
            bound.fetch_size = self.fetch_size
            future = self.session.execute_async(bound, execution_profile=PROFILE)
            future.add_callbacks(on_page, on_error, callback_args=(future, i),
                                 errback_args=(i, attempt))

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
                if state["error"] is None:
                    state["error"] = exc
            finish(i)

        for i in range(len(requests)):
            window.acquire()
            if state["error"] is not None:
                window.release()
                with lock:
                    state["pending"] -= len(requests) - i
                    if state["pending"] == 0:
                        done.set()
                break
            self.limiter.acquire()
            self.queries += 1
            start(i, 0)
        done.wait()
        if state["error"] is not None:
            raise state["error"]
        return results


class StoreReader:
    """One count store as an audit reads it."""

    def __init__(self, prepared: Prepared, settings: CassandraSettings, name: str,
                 fetcher: Fetcher) -> None:
        self.name = name
        self.store = CounterStore(prepared, settings, name)
        self.fetcher = fetcher
        # The store's prepared reads (see the report: storage could expose these publicly).
        self._read = {"account": self.store._read_account, "customer": self.store._read_customer}
        self._keys = {"account": self.store._account_keys,
                      "customer": self.store._customer_keys}

    def units(self, date: str, levels: Iterable[str]) -> set[Unit]:
        """Every unit the store's writers indexed for the date (all shards, in parallel)."""
        from storage import SHARDS

        requests = [(self._keys[level], (date, shard)) for level in levels
                    for shard in range(SHARDS)]
        tags = [level for level in levels for _ in range(SHARDS)]
        out: set[Unit] = set()
        for level, rows in zip(tags, self.fetcher.fetch(requests), strict=True):
            out.update((level, tuple(row)) for row in rows)
        return out

    def _requests(self, unit: Unit, date: str, include_month: bool
                  ) -> list[tuple[Any, tuple[Any, ...]]]:
        level, ids = unit
        low, high = date_slice(date)
        slices = [(date[:7], low, high)]
        if include_month:
            month = date[:7]
            slices.append((date[:4], month, month + "\x00"))
        statement = self._read[level]
        if level == "account":
            company, statistic = ids
            return [(statement, (company, statistic, period, lo, hi))
                    for period, lo, hi in slices]
        company, customer, statistic = ids
        return [(statement, (company, customer, period, statistic, lo, hi))
                for period, lo, hi in slices]

    def requests(self, units: Sequence[Unit], date: str, include_month: bool
                 ) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[Unit]]:
        """The queries that read the units, and the unit of each."""
        requests: list[tuple[Any, tuple[Any, ...]]] = []
        owners: list[Unit] = []
        for unit in units:
            for request in self._requests(unit, date, include_month):
                requests.append(request)
                owners.append(unit)
        return requests, owners


def read_stores(readers: Sequence[StoreReader], units: Sequence[Unit], date: str,
                include_month: bool) -> list[dict[Unit, list[Counted]]]:
    """Every counter of each unit on the date in each store, sorted by `order`: the queries
    of all the stores share one fetch, so they overlap."""
    requests: list[tuple[Any, tuple[Any, ...]]] = []
    owners: list[tuple[int, Unit]] = []
    for i, reader in enumerate(readers):
        reqs, units_of = reader.requests(units, date, include_month)
        requests += reqs
        owners += [(i, u) for u in units_of]
    out: list[dict[Unit, list[Counted]]] = [{u: [] for u in units} for _ in readers]
    for (i, unit), rows in zip(owners, readers[0].fetcher.fetch(requests), strict=True):
        out[i][unit].extend(decode(unit, rows))
    for side in out:
        for items in side.values():
            items.sort(key=order)
    return out


def decode(unit: Unit, rows: Iterable[tuple[Any, ...]]) -> list[Counted]:
    """Rows of the store's reads into counting's types (absent counter columns are 0)."""
    level, ids = unit
    if level == "account":
        company, statistic = ids
        return [AccountCount(AccountKey(company, statistic, resolution, bucket, facet, value),
                             count or 0, uniques or 0)
                for bucket, resolution, facet, value, count, uniques in rows]
    company, customer, statistic = ids
    return [CustomerCount(CustomerKey(company, customer, statistic, resolution, bucket),
                          count or 0)
            for bucket, resolution, count in rows]
