"""The gate counts only full-scope audits (issue 12, "The gate can be fooled"); pure: the
audit store is a list of records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from compare.audit import AuditParams
from compare.audits import EXACT_GATE, AuditRecord, GateScope, clean_days, narrowed_by
from compare.diff import Tolerance

DAY = "2025-11-02"
T0 = datetime(2025, 11, 3, 6, tzinfo=UTC)


def record(
    outcome: str, minutes: int, truth: str = "kafka", state: str = "done", **params: Any
) -> AuditRecord:
    p = AuditParams(DAY, "legacy", "shadow", truth=truth, **params).to_dict()
    return AuditRecord(
        f"{DAY}-{outcome}-{minutes}",
        DAY,
        "legacy",
        "shadow",
        truth,
        p,
        state=state,
        outcome=outcome,
        started_at=T0 + timedelta(minutes=minutes),
    )


class Store:
    def __init__(self, *records: AuditRecord) -> None:
        self.records = records

    def of_date(self, date: str) -> list[AuditRecord]:
        return sorted(
            (r for r in self.records if r.date == date), key=lambda r: r.started_at, reverse=True
        )


def gate(*records: AuditRecord, scope: GateScope = EXACT_GATE) -> Any:
    return clean_days(Store(*records), "legacy", "shadow", 1, DAY, scope)


NARROWED = [
    ({"companies": ("acme",)}, "company filter"),
    ({"statistics": ("views",)}, "statistic filter"),
    ({"level": "account"}, "level account only"),
    ({"level": "customer"}, "level customer only"),
    ({"truth": "none"}, "no truth"),
    ({"tolerance": Tolerance.parse(["count=5"]).to_dict()}, "tolerance looser"),
    ({"tolerance": Tolerance.parse(["uniques=1%"]).to_dict()}, "tolerance looser"),
    ({"allow_redeliveries": True}, "redeliveries allowed"),
]


def test_a_full_audit_is_full_scope() -> None:
    assert narrowed_by(record("clean", 0)) == []
    assert narrowed_by(record("clean", 0, include_month=True)) == []
    assert narrowed_by(AuditRecord("x", DAY, "legacy", "shadow", "kafka", {})) == [
        "parameters unknown"
    ]


@pytest.mark.parametrize(("change", "reason"), NARROWED)
def test_a_later_narrowed_clean_audit_cannot_hide_a_dirty_full_one(
    change: dict[str, Any], reason: str
) -> None:
    truth = change.pop("truth", "kafka")
    narrowed = record("clean", 10, truth=truth, **change)
    assert any(r.startswith(reason) for r in narrowed_by(narrowed)), narrowed_by(narrowed)
    verdict = gate(record("dirty", 0), narrowed)
    assert not verdict.clean
    (day,) = verdict.days
    assert (day.outcome, day.audit_id) == ("dirty", f"{DAY}-dirty-0")
    assert [n.audit_id for n in day.narrowed] == [narrowed.audit_id]
    # and alone it decides nothing: the day has no full-scope audit
    alone = gate(narrowed)
    assert not alone.clean and alone.days[0].outcome is None


def test_the_latest_full_audit_decides() -> None:
    assert gate(record("dirty", 0), record("clean", 5)).clean
    assert not gate(record("clean", 0), record("dirty", 5)).clean
    # unfinished audits decide nothing
    assert gate(
        record("clean", 0),
        record("error", 5, state="failed"),
        record("running", 7, state="running"),
    ).clean


def test_the_gate_may_accept_a_tolerance_and_redeliveries() -> None:
    loose = record("clean", 10, tolerance=Tolerance.parse(["count=5"]).to_dict())
    excused = record("clean", 20, allow_redeliveries=True)
    assert not gate(record("dirty", 0), loose).clean
    five = GateScope(tolerance=Tolerance.parse(["count=5"]))
    assert gate(record("dirty", 0), loose, scope=five).clean
    assert gate(loose, scope=GateScope(tolerance=Tolerance.parse(["count=6,1%"]))).clean
    assert not gate(loose, scope=GateScope(tolerance=Tolerance.parse(["count=4"]))).clean
    # a stricter audit than the gate asks for still counts, clean or dirty
    assert not gate(loose, record("dirty", 15), scope=five).clean
    assert not gate(record("dirty", 0), excused).clean
    assert gate(record("dirty", 0), excused, scope=GateScope(allow_redeliveries=True)).clean


def test_the_day_reports_what_was_not_counted() -> None:
    verdict = gate(record("clean", 0), record("dirty", 5, companies=("a",), level="account"))
    day = verdict.days[0].to_dict()
    assert verdict.clean and day["outcome"] == "clean"
    assert day["not_counted"] == [
        {
            "audit_id": f"{DAY}-dirty-5",
            "outcome": "dirty",
            "narrowed_by": ["level account only", "company filter"],
        }
    ]
