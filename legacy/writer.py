"""Legacy's counter writes, one request per Cassandra partition, each request's outcome known.

`storage.CounterStore` writes many partitions per call and raises on the first error, so a
caller cannot tell which of them were applied; retrying the call would double those. Legacy
retries (a task's customer write, a Big Bertha flush), so it writes through the store's
published layout (`storage.sink_layout`, the same contract the Abacus JVM sink uses): the
index rows of a call first (idempotent inserts, as CounterStore does, so compare never
misses a key), then one request per partition (a single-partition counter batch: applied
whole or not at all), all in flight at once, and reports which partitions were confirmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra.query import BatchStatement, BatchType

import storage
from counting import bucket_date
from settings import CassandraSettings
from storage.counters import BATCH_ROWS, sink_layout

_INDEX_CACHE_MAX = 200_000


@dataclass
class Outcome:
    """Which parts (caller's ids) were written, and the first error of the others."""

    written: list[int] = field(default_factory=list)
    error: BaseException | None = None


class CounterWriter:
    """Adds increments to one level of the legacy counter store."""

    def __init__(self, session: Any, settings: CassandraSettings, level: str) -> None:
        self._session = session
        self._layout = layout = sink_layout(settings, "legacy", level)
        self._update = session.prepare(layout.update)
        self._index = session.prepare(layout.index)
        self._indexed: set[tuple[str, ...]] = set()

    def _params(self, key: Any, measures: Sequence[int]) -> tuple[Any, ...]:
        values = [
            storage.period_of(key.resolution, key.bucket)
            if name == "period"
            else getattr(key, name)
            for name in self._layout.keys
        ]
        return (*measures, *values)

    def _index_rows(
        self, params: Iterable[tuple[Any, ...]], n_measures: int
    ) -> list[tuple[Any, ...]]:
        layout, out = self._layout, []
        resolution_at = n_measures + layout.keys.index("resolution")
        bucket_at = n_measures + layout.keys.index("bucket")
        for p in params:
            if p[resolution_at] != layout.index_resolution:
                continue
            fields = tuple(p[n_measures + i] for i in layout.index_fields)
            row = (bucket_date(p[bucket_at]), *fields)
            if row in self._indexed:
                continue
            shard = storage.shard_of(*(fields[i] for i in layout.shard_fields))
            out.append((row[0], shard, *fields))
            self._indexed.add(row)
        return out

    def write(self, parts: Mapping[int, Sequence[tuple[Any, Sequence[int]]]]) -> Outcome:
        """Write each part: (key, measures) rows of ONE partition (at most BATCH_ROWS rows);
        every part's request is in flight at once. Index rows go first."""
        params = {pid: [self._params(k, m) for k, m in rows] for pid, rows in parts.items()}
        n_measures = len(self._layout.measures)
        index = self._index_rows((p for ps in params.values() for p in ps), n_measures)
        outcome = Outcome()
        try:
            for future in [self._session.execute_async(self._index, row) for row in index]:
                future.result()
        except Exception as exc:
            for row in index:  # not indexed after all: indexed again next time
                self._indexed.discard((row[0], *row[2:]))
            outcome.error = exc
            return outcome
        if len(self._indexed) > _INDEX_CACHE_MAX:
            self._indexed.clear()
        futures = []
        for pid, rows in params.items():
            if len(rows) == 1:
                futures.append((pid, self._session.execute_async(self._update, rows[0])))
            else:
                batch = BatchStatement(batch_type=BatchType.COUNTER)
                for row in rows:
                    batch.add(self._update, row)
                futures.append((pid, self._session.execute_async(batch)))
        for pid, future in futures:
            try:
                future.result()
            except Exception as exc:
                outcome.error = outcome.error or exc
            else:
                outcome.written.append(pid)
        return outcome


def partitions(
    rows: Iterable[tuple[Any, Sequence[int]]], key_of_partition: Any
) -> list[list[tuple[Any, Sequence[int]]]]:
    """Rows grouped by partition, each group cut at BATCH_ROWS rows."""
    groups: dict[Any, list[tuple[Any, Sequence[int]]]] = {}
    for row in rows:
        groups.setdefault(key_of_partition(row[0]), []).append(row)
    return [g[i : i + BATCH_ROWS] for g in groups.values() for i in range(0, len(g), BATCH_ROWS)]
