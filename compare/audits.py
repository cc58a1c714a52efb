"""Audit history in the ops keyspace: every audit's record (id, date, sides, parameters,
summary, start, end, state, outcome), listed by date, and the question cutover gates ask:
"were the last N days clean?" (answered by full-scope audits only: see `narrowed_by`).

Tables (storage/schema.py, OPS_TABLES): `audits` by id, `audits_by_date` by date, newest
first. `state` is running | done | failed; `outcome` is running | clean | dirty | error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import date as Date
from typing import Any

from compare.diff import EXACT, Tolerance
from settings import CassandraSettings, Settings
from storage import OPS, Prepared, keyspace_of

_COLUMNS = (
    "audit_id, date, left_store, right_store, truth, params, summary, state, outcome, "
    "started_at, ended_at"
)


@dataclass
class AuditRecord:
    audit_id: str
    date: str
    left: str
    right: str
    truth: str
    params: dict[str, Any]
    summary: dict[str, Any] | None = None
    state: str = "running"
    outcome: str = "running"
    started_at: datetime = field(default_factory=lambda: now_ms())
    ended_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "audit_id": self.audit_id,
            "date": self.date,
            "left": self.left,
            "right": self.right,
            "truth": self.truth,
            "state": self.state,
            "outcome": self.outcome,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "params": self.params,
        }


def now_ms() -> datetime:
    """Now, truncated to what a CQL timestamp keeps (milliseconds), so a record read back
    names the same `audits_by_date` row."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # the driver returns naive UTC
    return at.isoformat(timespec="milliseconds")


def _utc(at: datetime | None) -> datetime | None:
    return None if at is None or at.tzinfo else at.replace(tzinfo=UTC)


class AuditStore:
    """The audit records of one ops keyspace; prepared statements only."""

    def __init__(self, prepared: Prepared, settings: CassandraSettings) -> None:
        # Only identifiers (the keyspace, from settings) are formatted in; values are bound.
        ks = keyspace_of(settings, OPS)
        self._session = prepared.session
        marks = ", ".join("?" * len(_COLUMNS.split(",")))
        self._insert = prepared(f"INSERT INTO {ks}.audits ({_COLUMNS}) VALUES ({marks})")  # noqa: S608
        self._insert_by_date = prepared(
            f"INSERT INTO {ks}.audits_by_date (date, started_at, audit_id, "  # noqa: S608
            "left_store, right_store, outcome) VALUES (?, ?, ?, ?, ?, ?)"
        )
        self._get = prepared(f"SELECT {_COLUMNS} FROM {ks}.audits WHERE audit_id = ?")  # noqa: S608
        self._all = prepared(f"SELECT {_COLUMNS} FROM {ks}.audits")  # noqa: S608
        self._of_date = prepared(f"SELECT audit_id FROM {ks}.audits_by_date WHERE date = ?")  # noqa: S608

    def save(self, record: AuditRecord) -> None:
        """Insert or overwrite the record (both tables)."""
        summary = None if record.summary is None else json.dumps(record.summary)
        self._session.execute(
            self._insert,
            (
                record.audit_id,
                record.date,
                record.left,
                record.right,
                record.truth,
                json.dumps(record.params),
                summary,
                record.state,
                record.outcome,
                record.started_at,
                record.ended_at,
            ),
        )
        self._session.execute(
            self._insert_by_date,
            (
                record.date,
                record.started_at,
                record.audit_id,
                record.left,
                record.right,
                record.outcome,
            ),
        )

    def get(self, audit_id: str) -> AuditRecord | None:
        row = self._session.execute(self._get, (audit_id,)).one()
        return None if row is None else _record(row)

    def of_date(self, date: str) -> list[AuditRecord]:
        """The audits of a date, newest first."""
        ids = [r.audit_id for r in self._session.execute(self._of_date, (date,))]
        return [r for r in (self.get(i) for i in ids) if r is not None]

    def all(self) -> Iterator[AuditRecord]:
        for row in self._session.execute(self._all):
            yield _record(row)


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        audit_id=row.audit_id,
        date=row.date,
        left=row.left_store,
        right=row.right_store,
        truth=row.truth,
        params=json.loads(row.params or "{}"),
        summary=json.loads(row.summary) if row.summary else None,
        state=row.state,
        outcome=row.outcome,
        started_at=_utc(row.started_at) or now_ms(),
        ended_at=_utc(row.ended_at),
    )


# -- the cutover gates' question --------------------------------------------------------
#
# Only a full-scope audit decides a gate: both levels, a truth, no company or statistic
# filter, a tolerance no looser than the gate's (exact unless the gate says otherwise) and
# redeliveries not excused unless the gate excuses them. A narrowed audit answers a narrower
# question: it is listed beside the day, never decides it, so it can never hide a dirty full
# audit of the same date.


@dataclass(frozen=True)
class GateScope:
    """What a gate demands of an audit beyond full scope."""

    tolerance: Tolerance = EXACT
    allow_redeliveries: bool = False


EXACT_GATE = GateScope()  # the default: exact, redeliveries not excused


def narrowed_by(record: AuditRecord, scope: GateScope = EXACT_GATE) -> list[str]:
    """Why `record` cannot decide a gate of `scope` (empty: it is a full-scope audit)."""
    p = record.params
    if not all(k in p for k in ("level", "companies", "statistics", "tolerance")):
        return ["parameters unknown"]
    reasons = []
    if p["level"] != "both":
        reasons.append(f"level {p['level']} only")
    if record.truth in ("", "none") or p.get("truth", record.truth) in ("", "none"):
        reasons.append("no truth")
    if p["companies"]:
        reasons.append("company filter")
    if p["statistics"]:
        reasons.append("statistic filter")
    try:
        tolerance = Tolerance.from_dict(p["tolerance"])
    except (KeyError, TypeError, ValueError):
        reasons.append("tolerance unknown")
    else:
        if _looser(tolerance, scope.tolerance):
            reasons.append("tolerance looser than the gate's")
    if p.get("allow_redeliveries") and not scope.allow_redeliveries:
        reasons.append("redeliveries allowed")
    return reasons


def _looser(a: Tolerance, b: Tolerance) -> bool:
    """Does `a` tolerate something `b` does not (in some measure, by abs or rel)?"""
    return any(
        x.abs > y.abs or x.rel > y.rel for x, y in ((a.count, b.count), (a.uniques, b.uniques))
    )


@dataclass(frozen=True)
class Narrowed:
    audit_id: str
    outcome: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class DayAudit:
    date: str
    audit_id: str | None
    outcome: str | None  # None: no finished full-scope audit of these sides on that date
    narrowed: tuple[Narrowed, ...] = ()  # finished audits that do not count, newest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "audit_id": self.audit_id,
            "outcome": self.outcome,
            "not_counted": [
                {"audit_id": n.audit_id, "outcome": n.outcome, "narrowed_by": list(n.reasons)}
                for n in self.narrowed
            ],
        }


@dataclass(frozen=True)
class CleanDays:
    clean: bool
    days: list[DayAudit]

    @property
    def audit_ids(self) -> list[str]:
        return [d.audit_id for d in self.days if d.audit_id is not None]


def clean_days(
    store: AuditStore, left: str, right: str, n: int, until: str, scope: GateScope = EXACT_GATE
) -> CleanDays:
    """For each of the n dates ending at `until`, the latest finished full-scope audit of
    left against right decides; the days are clean when every one has a clean audit."""
    last = Date.fromisoformat(until)
    days = []
    for back in range(n - 1, -1, -1):
        date = (last - timedelta(days=back)).isoformat()
        finished = sorted(
            (
                r
                for r in store.of_date(date)
                if r.left == left and r.right == right and r.state == "done"
            ),
            key=lambda r: r.started_at,
            reverse=True,
        )
        full = [r for r in finished if not narrowed_by(r, scope)]
        latest = full[0] if full else None
        others = tuple(
            Narrowed(r.audit_id, r.outcome, tuple(narrowed_by(r, scope)))
            for r in finished
            if r not in full
        )
        days.append(
            DayAudit(
                date,
                latest.audit_id if latest else None,
                latest.outcome if latest else None,
                others,
            )
        )
    return CleanDays(all(d.outcome == "clean" for d in days), days)


def last_clean_days(
    settings: Settings,
    left: str,  # the stores audited against each other, as the audits name them
    right: str,
    n: int,
    until: str | None = None,  # the last of the n days (YYYY-MM-DD)
    scope: GateScope = EXACT_GATE,
) -> CleanDays:
    """Were the last n days clean (by full-scope audits)? `until` defaults to yesterday
    (UTC): a date is audited once it is over."""
    from storage import connect

    until = until or (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    session = connect(settings.cassandra)
    try:
        return clean_days(
            AuditStore(Prepared(session), settings.cassandra), left, right, n, until, scope
        )
    finally:
        session.cluster.shutdown()
