"""`abacus dump`: a count store's counters as exchange records (SEMANTICS.md §6)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from compare.cassandra import Fetcher, StoreReader, add_profile, read_stores
from compare.diff import Counted, order
from settings import Settings
from storage import CounterStore, Prepared, connect, counted_of_row


def dump_store(
    settings: Settings,
    store: str,
    levels: Sequence[str],
    date: str | None = None,
    include_month: bool = False,
    concurrency: int = 64,
    max_rps: float = 0,
    chunk_units: int = 512,
) -> Iterator[Counted]:
    """Every counter of a store (a full scan), or of one date (through its index, read in
    parallel), level by level."""
    session = connect(settings.cassandra)
    try:
        add_profile(session, settings.cassandra)
        prepared = Prepared(session)
        if date is None:
            counters = CounterStore(prepared, settings.cassandra, store)
            for level in levels:
                yield from counters.scan(level)
            return
        reader = StoreReader(
            prepared, settings.cassandra, store, Fetcher(session, concurrency, max_rps)
        )
        for level in levels:
            units = sorted(reader.units(date, (level,)))
            for i in range(0, len(units), chunk_units):
                chunk = units[i : i + chunk_units]
                (rows,) = read_stores([reader], chunk, date, include_month)
                for unit in chunk:
                    yield from sorted((counted_of_row(*unit, r) for r in rows[unit]), key=order)
    finally:
        session.cluster.shutdown()
