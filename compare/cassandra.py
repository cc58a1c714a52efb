"""Reading a count store for an audit: the date's units from its per-date index, then each
unit's counters by many concurrent async queries (a bounded in-flight window, a rate limit
in queries per second, every page of a large partition followed).

The CQL is the store's own (storage.CounterStore prepares it); this module only runs it
concurrently and decodes rows into counting's types.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from cassandra.cluster import ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from compare.diff import Counted, order
from compare.truth import Unit
from counting import AccountCount, AccountKey, CustomerCount, CustomerKey
from settings import CassandraSettings
from storage import SHARDS, CounterStore, Prepared, date_slice, keyspace_of

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
                 fetcher: Fetcher, in_size: int = 64) -> None:
        self.name, self.fetcher, self.in_size = name, fetcher, in_size
        self.store = CounterStore(prepared, settings, name)
        # The store's own prepared reads (storage could expose these publicly).
        self._read_account = self.store._read_account
        self._keys = {"account": self.store._account_keys,
                      "customer": self.store._customer_keys}
        # Customer partitions hold a few rows each: one query per partition would cost more
        # in round trips than in rows, so the customers of a (company, statistic) are read
        # `in_size` at a time. Only the keyspace (an identifier) is formatted in.
        ks = keyspace_of(settings, name)
        self._read_customers = prepared(
            f"SELECT customer_id, bucket, resolution, count FROM {ks}.customer_counts "  # noqa: S608
            "WHERE company_id = ? AND customer_id IN ? AND period = ? AND statistic_id = ? "
            "AND bucket >= ? AND bucket < ?")

    def units(self, date: str, levels: Iterable[str]) -> set[Unit]:
        """Every unit the store's writers indexed for the date (all shards, in parallel)."""
        requests = [(self._keys[level], (date, shard)) for level in levels
                    for shard in range(SHARDS)]
        tags = [level for level in levels for _ in range(SHARDS)]
        out: set[Unit] = set()
        for level, rows in zip(tags, self.fetcher.fetch(requests), strict=True):
            out.update((level, tuple(row)) for row in rows)
        return out

    def requests(self, units: Sequence[Unit], date: str, include_month: bool
                 ) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[Decoder]]:
        """The queries that read the units, and how to decode the rows of each."""
        low, high = date_slice(date)
        slices = [(date[:7], low, high)]
        if include_month:
            slices.append((date[:4], date[:7], date[:7] + "\x00"))
        requests: list[tuple[Any, tuple[Any, ...]]] = []
        decoders: list[Decoder] = []
        customers: dict[tuple[str, str], list[str]] = defaultdict(list)
        for level, ids in units:
            if level == "account":
                company, statistic = ids
                for period, lo, hi in slices:
                    requests.append((self._read_account, (company, statistic, period, lo, hi)))
                    decoders.append(partial(_decode_account, company, statistic))
            else:
                company, customer, statistic = ids
                customers[(company, statistic)].append(customer)
        for (company, statistic), names in customers.items():
            for i in range(0, len(names), self.in_size):
                batch = names[i:i + self.in_size]
                for period, lo, hi in slices:
                    requests.append((self._read_customers,
                                     (company, batch, period, statistic, lo, hi)))
                    decoders.append(partial(_decode_customers, company, statistic))
        return requests, decoders


Decoder = Callable[[list[tuple[Any, ...]]], Iterator[tuple[Unit, Counted]]]


def _decode_account(company: str, statistic: str, rows: list[tuple[Any, ...]]
                    ) -> Iterator[tuple[Unit, Counted]]:
    unit: Unit = ("account", (company, statistic))
    for bucket, resolution, facet, value, count, uniques in rows:
        yield unit, AccountCount(AccountKey(company, statistic, resolution, bucket, facet, value),
                                 count or 0, uniques or 0)


def _decode_customers(company: str, statistic: str, rows: list[tuple[Any, ...]]
                      ) -> Iterator[tuple[Unit, Counted]]:
    for customer, bucket, resolution, count in rows:
        yield (("customer", (company, customer, statistic)),
               CustomerCount(CustomerKey(company, customer, statistic, resolution, bucket),
                             count or 0))


def read_stores(readers: Sequence[StoreReader], units: Sequence[Unit], date: str,
                include_month: bool) -> list[dict[Unit, list[Counted]]]:
    """Every counter of each unit on the date in each store, sorted by `order`: the queries
    of all the stores share one fetch, so they overlap."""
    requests: list[tuple[Any, tuple[Any, ...]]] = []
    owners: list[tuple[int, Decoder]] = []
    for i, reader in enumerate(readers):
        reqs, decoders = reader.requests(units, date, include_month)
        requests += reqs
        owners += [(i, d) for d in decoders]
    out: list[dict[Unit, list[Counted]]] = [{u: [] for u in units} for _ in readers]
    for (i, decoder), rows in zip(owners, readers[0].fetcher.fetch(requests), strict=True):
        side = out[i]
        for unit, counted in decoder(rows):
            side[unit].append(counted)
    for side in out:
        for items in side.values():
            items.sort(key=order)
    return out
