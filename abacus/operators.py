"""The Python operators of both jobs: thin adapters around the counting contract.

They run inside Flink (thread mode: the JVM's embedded interpreter) and hold no keyed state:
de-duplication, fan-out, uniqueness and windows are Flink SQL in the JVM
(`abacus/pipeline.py`).
Every counting rule is a call into `counting`; these classes only convert rows and do I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import MapFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.table.udf import FunctionContext, ScalarFunction

from abacus.progress import Counter
from counting import (
    RESOLUTIONS,
    AccountKey,
    CustomerKey,
    Rejection,
    account_facets,
    bucket_labels,
    parse_event,
)
from counting.buckets import LABEL_WIDTH
from settings import CassandraSettings, KafkaSettings

log = logging.getLogger(__name__)

# -- validation ----------------------------------------------------------------------------


class Validate(ProcessFunction):  # type: ignore[misc]
    """Raw Kafka value -> one event row, or (raw bytes, reason, detail, event_id) to a side
    output: every check is `counting.parse_event` on the bytes exactly as received.

    The event row carries what the jobs count by, as the contract computes it: the event's
    local (hour, day, month) labels (`counting.bucket_labels`) and the (facet, value) pairs
    it counts under (`counting.account_facets`, the total first) as two parallel arrays (an
    array of rows arrives in the JVM as copies of one reused row). Its account keys are every
    label with every pair, which the SQL forms with `CROSS JOIN UNNEST ... WITH ORDINALITY`.
    """

    def __init__(self, rejected: OutputTag) -> None:
        self._rejected = rejected

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        parsed = parse_event(value)
        if isinstance(parsed, Rejection):
            yield self._rejected, Row(value, parsed.reason.value, parsed.detail,
                                      parsed.event_id or "")
            return
        hour, day, month = bucket_labels(parsed.timestamp, parsed.timezone)
        facets, values = zip(*account_facets(parsed), strict=True)
        yield Row(parsed.event_id, parsed.company_id, parsed.customer_id, parsed.statistic_id,
                  hour, day, month, list(facets), list(values))


class DeadLetter(MapFunction):  # type: ignore[misc]
    """Publishes each rejected event to the DLQ topic: original bytes, reason in headers.

    Synchronous (flush per record): invalid events are rare, and a record is acknowledged
    by Kafka before the checkpoint that covers its offset can complete, so none is lost.
    """

    def __init__(self, kafka: KafkaSettings, source: str) -> None:
        self._kafka, self._source = kafka, source
        self._producer: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({**self._kafka.client_config(), "acks": "all",
                                   "message.max.bytes": 2 * 1024 * 1024 + 4096})

    def map(self, value: Row) -> int:
        raw, reason, detail, event_id = value
        headers = [("reason", reason.encode()), ("detail", detail.encode()),
                   ("event_id", event_id.encode()), ("source", self._source.encode())]
        errors: list[Any] = []
        self._producer.produce(self._kafka.dlq_topic, value=bytes(raw), headers=headers,
                               on_delivery=lambda err, _msg: errors.append(err))
        self._producer.flush(60)
        if not errors or errors[0] is not None:
            raise RuntimeError(f"dead-letter publish failed: {errors[0] if errors else 'timeout'}")
        return 1

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)


# -- drain progress (a SQL scalar function) -------------------------------------------------


class Counted(ScalarFunction):  # type: ignore[misc]
    """`counted(n)`: adds the n count increments of a first delivery to the `fanned` drain
    counter (`abacus.progress`) and returns TRUE; the SQL filters on it right after the
    keep-first by event_id, so each event counts once."""

    def __init__(self, progress_dir: str) -> None:
        self._progress_dir = progress_dir
        self._fanned: Counter | None = None

    def open(self, function_context: FunctionContext) -> None:
        self._fanned = Counter(self._progress_dir, "fanned")

    def is_deterministic(self) -> bool:
        return False  # never folded away or moved: it must run once per first delivery

    def eval(self, n: int) -> bool:
        assert self._fanned is not None
        self._fanned.add(n)
        return True


_ROLLUPS = [(resolution, LABEL_WIDTH[resolution]) for resolution in RESOLUTIONS[1:]]


def rolled_up(rows: Iterable[tuple[Any, ...]], key_len: int, res_at: int
              ) -> dict[tuple[Any, ...], list[int]]:
    """A batch's increments summed per key, each hour increment's count also added to its day
    and month (an hour label determines them: counting.buckets.LABEL_WIDTH). Uniques are never
    rolled up: they come per resolution from the uniqueness step. A row is the key's fields
    (resolution at `res_at`, bucket after it) followed by its measures (count[, uniques])."""
    totals: dict[tuple[Any, ...], list[int]] = {}

    def add(key: tuple[Any, ...], measures: Iterable[int]) -> None:
        entry = totals.get(key)
        if entry is None:
            totals[key] = [int(m) for m in measures]
        else:
            for i, m in enumerate(measures):
                entry[i] += int(m)

    for row in rows:
        key, measures = row[:key_len], row[key_len:]
        add(key, measures)
        if key[res_at] == "hour" and measures[0]:
            rest = [0] * (len(measures) - 1)
            for resolution, width in _ROLLUPS:
                add((*key[:res_at], resolution, key[res_at + 1][:width], *key[res_at + 2:]),
                    (measures[0], *rest))
    return totals


# -- the counter sink ----------------------------------------------------------------------


class WriteCounts(MapFunction):  # type: ignore[misc]
    """Writes one batch (a window's increments for a shard) to a counter store, returning only
    when Cassandra has acknowledged all of it: the batch is one record, so a checkpoint
    never completes between receiving increments and writing them (at-least-once).

    Retries with exponential backoff; after the last attempt the job fails and restarts from
    its latest checkpoint (which re-applies the windows since: milestone 1's known excess).
    """

    def __init__(self, cassandra: CassandraSettings, store: str, level: str,
                 progress_dir: str, run_started_ms: int, attempts: int = 6,
                 backoff_s: float = 0.5) -> None:
        self._cassandra, self._store, self._level = cassandra, store, level
        self._progress_dir, self._run_started_ms = progress_dir, run_started_ms
        self._attempts, self._backoff_s = attempts, backoff_s
        self._session: Any = None
        self._write: Callable[[list[Any]], None] | None = None
        self._written: Counter | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        from storage import CounterStore, Prepared, connect

        self._session = connect(self._cassandra)
        store = CounterStore(Prepared(self._session), self._cassandra, self._store)
        self._write = store.write_account if self._level == "account" else store.write_customer
        if self._progress_dir:
            self._written = Counter(self._progress_dir, "written")

    def map(self, value: Row) -> int:
        window_end_ms, columns = int(value[0]), value[1:]  # one array per column
        rows = zip(*columns, strict=True)
        if self._level == "account":
            batch: list[Any] = [(AccountKey(*k), c, u)
                                for k, (c, u) in rolled_up(rows, 6, 2).items()]
        else:
            batch = [(CustomerKey(*k), c) for k, (c,) in rolled_up(rows, 5, 3).items()]
        self._with_retries(batch)
        if self._written is not None and window_end_ms > self._run_started_ms:
            self._written.add(sum(r[1] for r in batch))
        return len(batch)

    def _with_retries(self, batch: list[Any]) -> None:
        assert self._write is not None
        for attempt in range(1, self._attempts + 1):
            try:
                self._write(batch)
                return
            except Exception as exc:  # the driver's timeouts and unavailability errors
                if attempt == self._attempts:
                    raise
                delay = self._backoff_s * 2 ** (attempt - 1)
                log.warning("counter write failed (%s), retry %d in %.1fs",
                            type(exc).__name__, attempt, delay)
                time.sleep(delay)

    def close(self) -> None:
        if self._session is not None:
            self._session.cluster.shutdown()
