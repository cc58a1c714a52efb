"""Mirror overflow counts per event date, in the ops keyspace (`mirror_overflow`).

The bridge's mirror queue is bounded; what RabbitMQ drops from its head is dead-lettered to
the overflow queue, which the shadow bridge drains and counts here by the local date of
each event (the date the audit of that day compares), so the audit can say "N mirror
overflows on this date" instead of showing a silent shortfall of Abacus.

Counter columns: `messages` (overflowed messages), `redelivered` (those among them that
RabbitMQ delivered again after a lost connection or a crashed drainer: the drainer adds a
batch here before it acks it, so a crash in between counts that batch twice; `redelivered`
bounds the double count). Messages whose event has no date (undecodable, invalid) are
counted under UNDATED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from settings import CassandraSettings
from storage.cassandra import Prepared
from storage.schema import OPS, keyspace_of

TABLE = "mirror_overflow"
UNDATED = "undated"


@dataclass(frozen=True, slots=True)
class Overflow:
    """Overflowed messages of one date, and how many of them came redelivered."""

    messages: int = 0
    redelivered: int = 0


class OverflowStore:
    """Reads and increments `mirror_overflow`; prepared statements only."""

    def __init__(self, prepared: Prepared, settings: CassandraSettings) -> None:
        ks = keyspace_of(settings, OPS)  # an identifier from settings; values are bound
        self._session = prepared.session
        self._add = prepared(
            f"UPDATE {ks}.{TABLE} SET messages = messages + ?, "
            "redelivered = redelivered + ? WHERE date = ?"
        )
        self._one = prepared(f"SELECT messages, redelivered FROM {ks}.{TABLE} WHERE date = ?")
        self._all = prepared(f"SELECT date, messages, redelivered FROM {ks}.{TABLE}")

    def add(self, counts: Mapping[str, Overflow]) -> None:
        """Increment each date's counters (one statement per date, synchronously)."""
        for date, o in sorted(counts.items()):
            if o.messages or o.redelivered:
                self._session.execute(self._add, (o.messages, o.redelivered, date))

    def of_date(self, date: str) -> Overflow:
        row = self._session.execute(self._one, (date,)).one()
        if row is None:
            return Overflow()
        return Overflow(row.messages or 0, row.redelivered or 0)

    def all(self) -> dict[str, Overflow]:
        """Every date with overflow (a small table: one row per date)."""
        return {
            r.date: Overflow(r.messages or 0, r.redelivered or 0)
            for r in self._session.execute(self._all)
        }


def overflow_of_date(
    prepared: Prepared, settings: CassandraSettings, date: str
) -> dict[str, int] | None:
    """{"messages": n, "redelivered": r} of `date` for an audit's summary, or None when the
    ops keyspace has no overflow table (created before it existed: nothing counted)."""
    from cassandra import InvalidRequest

    try:
        o = OverflowStore(prepared, settings).of_date(date)
    except InvalidRequest:
        return None
    return {"messages": o.messages, "redelivered": o.redelivered}
