"""The cutover's stage in the ops keyspace: read, and changed only by compare-and-set.

One row per level (`cutover.stages.LEVEL`: the whole pipeline) in `cutover_stage`: the
stage, since when, an epoch (how many times `m1` was entered: each entry gets a fresh live
topic and serving jobs), a `version` that every write bumps with a lightweight transaction
(`... IF version = <what I read>`), and the transition in progress, if any (JSON: from, to,
steps, the step reached, its owner and heartbeat). Two operators writing from the same
version: Cassandra's Paxos lets one win; the other gets `Conflict` with what is there now.
No row means the stage `legacy`, version 0 (the first write inserts `IF NOT EXISTS`).

Every transition is logged in `cutover_transitions` (newest first): kind, from, to, who,
host, the audit ids that justified it, forced or not and the reason, its state (running,
done, rolled back, failed) and the steps it ran.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.util import uuid_from_time

from cutover.stages import FIRST, LEVEL
from settings import CassandraSettings, Settings
from storage import OPS, Prepared, keyspace_of


@dataclass(frozen=True, slots=True)
class StageState:
    stage: str
    version: int  # 0: never written
    epoch: int  # entries into m1 so far
    since_ms: int | None  # when the stage was entered
    transition: dict[str, Any] | None  # the transition in progress
    updated_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "version": self.version,
            "epoch": self.epoch,
            "since_ms": self.since_ms,
            "transition": self.transition,
            "updated_ms": self.updated_ms,
        }


INITIAL = StageState(FIRST, 0, 0, None, None, None)


class Conflict(Exception):
    """The compare-and-set lost: someone changed the stage row since it was read."""

    def __init__(self, current: StageState) -> None:
        self.current = current
        super().__init__(f"the stage row changed meanwhile (now version {current.version})")


def _ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class StageStore:
    """The stage row. `get()` is a plain read (the read API polls it); `get(serial=True)`
    reads through Paxos, as the compare-and-set sees it."""

    def __init__(self, session: Any, settings: CassandraSettings, level: str = LEVEL) -> None:
        self._p = Prepared(session)
        self._level = level
        ks = keyspace_of(settings, OPS)
        cols = "stage, version, epoch, since, transition, updated_at"
        self._select = f"SELECT {cols} FROM {ks}.cutover_stage WHERE level = ?"  # noqa: S608
        self._insert = (
            f"INSERT INTO {ks}.cutover_stage (level, {cols}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
            "IF NOT EXISTS"
        )
        self._update = (
            f"UPDATE {ks}.cutover_stage SET stage = ?, version = ?, epoch = ?, since = ?, "  # noqa: S608
            "transition = ?, updated_at = ? WHERE level = ? IF version = ?"
        )

    def get(self, serial: bool = False) -> StageState:
        statement = self._p(self._select)
        bound = statement.bind((self._level,))
        if serial:
            bound.consistency_level = ConsistencyLevel.LOCAL_SERIAL
        row = self._p.session.execute(bound).one()
        return INITIAL if row is None else self._state(row)

    @staticmethod
    def _state(row: Any) -> StageState:
        return StageState(
            stage=row.stage,
            version=row.version or 0,
            epoch=row.epoch or 0,
            since_ms=_ms(row.since),
            transition=json.loads(row.transition) if row.transition else None,
            updated_ms=_ms(row.updated_at),
        )

    def write(self, expected: StageState, **changes: Any) -> StageState:
        """Write `expected` with `changes` (stage, epoch, since_ms, transition) and the next
        version, if the row is still at `expected.version`; else raise `Conflict`."""
        new = replace(expected, **changes, version=expected.version + 1, updated_ms=now_ms())
        transition = json.dumps(new.transition, sort_keys=True) if new.transition else None
        values = (new.stage, new.version, new.epoch, _ts(new.since_ms), transition)
        if expected.version == 0:
            result = self._p.session.execute(
                self._p(self._insert), (self._level, *values, _ts(new.updated_ms))
            )
        else:
            result = self._p.session.execute(
                self._p(self._update),
                (*values, _ts(new.updated_ms), self._level, expected.version),
            )
        if not result.was_applied:
            raise Conflict(self.get(serial=True))
        return new


class TransitionLog:
    """`cutover_transitions`: one row per transition, written when it starts and updated as
    it ends."""

    COLUMNS = (
        "kind",
        "from_stage",
        "to_stage",
        "who",
        "host",
        "audit_ids",
        "forced",
        "reason",
        "state",
        "steps",
    )

    def __init__(self, session: Any, settings: CassandraSettings, level: str = LEVEL) -> None:
        self._p = Prepared(session)
        self._level = level
        ks = keyspace_of(settings, OPS)
        self._insert = (
            f"INSERT INTO {ks}.cutover_transitions (level, at, {', '.join(self.COLUMNS)}) "  # noqa: S608
            f"VALUES (?, ?, {', '.join('?' for _ in self.COLUMNS)})"
        )
        self._end = (
            f"UPDATE {ks}.cutover_transitions SET state = ?, steps = ?, ended_at = ? "  # noqa: S608
            "WHERE level = ? AND at = ?"
        )
        self._select = (
            f"SELECT at, {', '.join(self.COLUMNS)}, ended_at FROM {ks}.cutover_transitions "  # noqa: S608
            "WHERE level = ? LIMIT ?"
        )

    @staticmethod
    def new_id() -> str:
        return str(uuid_from_time(datetime.now(UTC)))

    def start(self, at: str, entry: dict[str, Any]) -> None:
        values = [entry.get(c) for c in self.COLUMNS]
        values[self.COLUMNS.index("steps")] = json.dumps(entry.get("steps") or [])
        self._p.session.execute(self._p(self._insert), (self._level, uuid.UUID(at), *values))

    def end(self, at: str, state: str, steps: list[dict[str, Any]]) -> None:
        self._p.session.execute(
            self._p(self._end),
            (state, json.dumps(steps), _ts(now_ms()), self._level, uuid.UUID(at)),
        )

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._p.session.execute(self._p(self._select), (self._level, limit))
        out = []
        for row in rows:
            started = datetime.fromtimestamp(
                (row.at.time - 0x01B21DD213814000) / 1e7, UTC
            )  # a timeuuid's 100 ns intervals since 1582-10-15
            out.append(
                {
                    "id": str(row.at),
                    "at_ms": int(started.timestamp() * 1000),
                    **{c: getattr(row, c) for c in self.COLUMNS if c != "steps"},
                    "audit_ids": list(row.audit_ids or []),
                    "steps": json.loads(row.steps) if row.steps else [],
                    "ended_ms": _ms(row.ended_at),
                }
            )
        return out


def current(settings: Settings) -> StageState:
    """The stage now (opens and closes its own session)."""
    from storage import connect

    session = connect(settings.cassandra)
    try:
        return StageStore(session, settings.cassandra).get()
    finally:
        session.cluster.shutdown()
