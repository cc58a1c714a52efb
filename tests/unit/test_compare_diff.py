"""The pure three-way diff and its summary: classes, verdicts, redeliveries, tolerance."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compare.diff import (
    EXACT,
    Bound,
    Tally,
    Tolerance,
    classify,
    diff,
    diff_rows,
    order,
)
from compare.summary import Summary
from counting import AccountCount, AccountKey, CustomerCount, CustomerKey, Recount
from counting.generate import GeneratorConfig, generate
from storage import row_of


def acc(
    company: str, hour: str, count: int, uniques: int, facet: str = "", value: str = ""
) -> AccountCount:
    return AccountCount(AccountKey(company, "opened", "hour", hour, facet, value), count, uniques)


def cus(company: str, customer: str, hour: str, count: int) -> CustomerCount:
    return CustomerCount(CustomerKey(company, customer, "opened", "hour", hour), count)


H = "2025-12-01T03"


def run(left, right, truth=None, redelivered=None, **kw):
    tally = Tally()
    records = [
        m.to_record()
        for m in diff(
            sorted(left, key=order),
            sorted(right, key=order),
            None if truth is None else sorted(truth, key=order),
            None if redelivered is None else sorted(redelivered, key=order),
            tally=tally,
            **kw,
        )
    ]
    return records, tally


def test_identical_sides_yield_nothing() -> None:
    side = [acc("A", H, 3, 2), acc("B", H, 1, 1), cus("A", "c1", H, 2)]
    records, tally = run(side, list(side), truth=list(side))
    assert records == []
    assert (tally.compared, tally.matched, tally.left_total) == (3, 3, 6)


def test_every_class_and_verdict() -> None:
    left = [acc("A", H, 3, 2), acc("B", H, 5, 5), acc("C", H, 2, 2), cus("A", "c1", H, 2)]
    right = [acc("A", H, 3, 2), acc("B", H, 4, 4), acc("D", H, 1, 1), cus("A", "c1", H, 2)]
    truth = [acc("A", H, 3, 2), acc("B", H, 4, 4), acc("D", H, 1, 1), cus("A", "c1", H, 3)]
    records, tally = run(left, right, truth)
    by = {(r["company_id"], r["level"]): r for r in records}
    assert by[("B", "account")]["class"] == "differs"
    assert by[("B", "account")]["truth_supports"] == "right"
    assert by[("B", "account")]["delta_count"] == -1
    assert by[("B", "account")]["delta_uniques"] == -1
    assert by[("C", "account")]["class"] == "only_left"
    assert by[("C", "account")]["right_count"] is None
    assert by[("C", "account")]["truth_supports"] == "right"  # truth has no such key
    assert by[("D", "account")]["class"] == "only_right"
    assert by[("D", "account")]["truth_supports"] == "right"
    both_wrong = by[("A", "customer")]
    assert both_wrong["class"] == "match" and both_wrong["truth_supports"] == "neither"
    assert "left_uniques" not in both_wrong and both_wrong["customer_id"] == "c1"
    assert all(r["defect"] for r in records)
    assert (tally.compared, tally.matched) == (5, 1)


def test_redelivery_is_named_and_can_be_allowed() -> None:
    # legacy counted one redelivery of an event: count +1, uniques unchanged
    left, right = [acc("A", H, 4, 2)], [acc("A", H, 3, 2)]
    truth, redelivered = [acc("A", H, 3, 2)], [acc("A", H, 1, 1)]
    (record,), _ = run(left, right, truth, redelivered)
    assert record["truth_supports"] == "right"
    assert record["redelivery"] == "left"
    assert record["deliveries_count"] == 4
    assert record["defect"] is True
    (record,), _ = run(left, right, truth, redelivered, allow_redeliveries=True)
    assert record["defect"] is False and record["redelivery"] == "left"


def test_not_a_redelivery_when_the_value_does_not_match_deliveries() -> None:
    (record,), _ = run(
        [acc("A", H, 6, 2)],
        [acc("A", H, 3, 2)],
        [acc("A", H, 3, 2)],
        [acc("A", H, 1, 1)],
        allow_redeliveries=True,
    )
    assert record["redelivery"] is None and record["defect"] is True


def test_tolerance_parse_and_bounds() -> None:
    tol = Tolerance.parse(["count=2", "uniques=1,10%"])
    assert tol.count == Bound(2, 0) and tol.uniques == Bound(1, 0.1)
    assert tol.allows((10, 5), (12, 6))
    assert not tol.allows((10, 5), (13, 5))
    assert Tolerance.parse(["count=1%"]).allows((1000, 0), (1010, 0))
    assert not Tolerance.parse(["count=1%"]).allows((1000, 0), (1011, 0))
    for bad in ["count", "hits=1", "count=x", "count=-1", "count=1%%"]:
        with pytest.raises(ValueError, match="tolerance"):
            Tolerance.parse([bad])
    assert Tolerance.from_dict(tol.to_dict()) == tol


def test_tolerated_differences_are_reported_but_not_defects() -> None:
    records, _ = run(
        [acc("A", H, 100, 10)], [acc("A", H, 101, 10)], tolerance=Tolerance.parse(["count=1"])
    )
    assert records[0]["defect"] is False
    records, _ = run([acc("A", H, 100, 10)], [acc("A", H, 101, 10)], tolerance=EXACT)
    assert records[0]["defect"] is True


def test_unsorted_side_is_refused() -> None:
    side = [acc("A", H, 1, 1), acc("A", H, 1, 1)]
    with pytest.raises(ValueError, match="twice"):
        list(diff(side, []))


def test_summary_attribution_and_hours() -> None:
    left = [acc("A", f"2025-12-01T{h:02d}", 5, 5) for h in range(24)] + [acc("B", H, 1, 1)]
    right = [acc("A", f"2025-12-01T{h:02d}", 5 + (h == 7), 5) for h in range(24)]
    records, tally = run(left, right)
    summary = Summary(has_truth=False, top=5)
    for record in records:
        summary.add(record)
    out = summary.to_dict(tally)
    assert out["classes"] == {"match": 0, "only_left": 1, "only_right": 0, "differs": 1}
    assert [a["label"] for a in out["attribution"]["companies"]] == ["A", "B"]
    assert out["hour_chart"]["left"][3] == 1  # B only left, at 03
    assert out["hour_chart"]["right"][7] == 1  # A right higher, at 07
    assert out["errors"]["count"]["max_abs"] == 1
    assert out["errors"]["count"]["max_rel"] == 1.0  # only_left: all of it
    assert out["truth_supports"] is None


def _recount(events) -> Recount:
    r = Recount()
    for e in events:
        r.add_raw(e)
    return r


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=30))
def test_diff_finds_exactly_the_perturbed_keys(seed: int, changes: int) -> None:
    events = list(generate(GeneratorConfig(n=60, seed=seed, companies=3, customers=30)))
    truth = sorted([*_recount(events).account(), *_recount(events).customer()], key=order)
    rng = random.Random(seed)
    right = list(truth)
    changed = set()
    for _ in range(changes):
        i = rng.randrange(len(right))
        c = right[i]
        right[i] = c._replace(count=c.count + 1)
        changed.add(c.key)
    records = list(diff(truth, right, truth))
    assert {r.key for r in records} == changed
    assert all(r.kind == "differs" and r.supports == "left" for r in records)


def test_classify_absent_equals_zero() -> None:
    assert (
        classify(AccountKey("A", "s", "hour", H, "", ""), (0, 0), None, None, None, False) is None
    )


def _by_unit(items):
    from compare.truth import unit_of

    grouped: dict = {}
    for c in items:
        grouped.setdefault(unit_of(c), []).append(row_of(c))
    return grouped


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=20),
    st.booleans(),
    st.booleans(),
)
def test_diff_rows_equals_diff(seed: int, changes: int, with_truth: bool, shuffle: bool) -> None:
    """The audit's row diff (per unit, whole-row shortcuts) says what the streaming diff
    says: same records, same tally, whatever the row order and whichever side differs."""
    events = list(generate(GeneratorConfig(n=40, seed=seed, companies=2, customers=20)))
    base = sorted([*_recount(events).account(), *_recount(events).customer()], key=order)
    rng = random.Random(seed)
    sides = [list(base), list(base), list(base)]
    for _ in range(changes):
        side = sides[rng.randrange(3)]
        i = rng.randrange(len(side))
        action = rng.random()
        if action < 0.6:
            side[i] = side[i]._replace(count=side[i].count + rng.choice((-1, 1, 2)))
        elif action < 0.8:
            del side[i]
        else:
            side[i] = side[i]._replace(count=0)
    left, right, truth = sides
    redelivered = [c._replace(count=1) for c in base[::7]]
    tally_a = Tally()
    expected = [
        m.to_record()
        for m in diff(
            left,
            right,
            truth if with_truth else None,
            redelivered if with_truth else None,
            tally=tally_a,
        )
    ]
    tally_b = Tally()
    got = []
    sides_rows = [_by_unit(s) for s in (left, right, truth, redelivered)]
    units = sorted(set().union(*sides_rows[:3]), key=lambda u: (u[0] != "account", u[1]))
    for unit in units:
        rows = [list(s.get(unit, [])) for s in sides_rows]
        if shuffle:
            for r in rows:
                rng.shuffle(r)
        got += [
            m.to_record()
            for m in diff_rows(
                unit,
                rows[0],
                rows[1],
                rows[2] if with_truth else None,
                rows[3] if with_truth else None,
                tally=tally_b,
            )
        ]
    assert got == expected
    assert tally_b == tally_a


def test_diff_rows_treats_a_null_counter_as_zero() -> None:
    unit = ("account", ("A", "opened"))
    left = [(H, "hour", "", "", None, 2)]
    right = [(H, "hour", "", "", 0, 2)]
    tally = Tally()
    assert diff_rows(unit, left, right, tally=tally) == []
    assert (tally.compared, tally.matched) == (1, 1)
    (m,) = diff_rows(unit, left, [(H, "hour", "", "", 1, 2)])
    assert m.key == AccountKey("A", "opened", "hour", H, "", "") and m.kind == "differs"


@pytest.mark.parametrize("include_month", [False, True])
def test_truth_rows_are_the_date_counters_of_the_recount(include_month: bool) -> None:
    """The truth's rows of a date, per unit, are exactly counting's counters of that date
    (hour and day buckets on it, its month's with include_month) as `row_of` rows, sorted;
    a redelivered duplicate is counted apart."""
    from compare.truth import on_date, truth_of, unit_of

    events = list(
        generate(
            GeneratorConfig(
                n=300, seed=3, companies=3, customers=40, span_s=3 * 86_400, duplicate_share=0.1
            )
        )
    )
    date = "2025-12-02"
    truth = truth_of(events, date, include_month, "test")
    expected: dict = {}
    on_day: set = set()
    firsts = _recount(events)
    for c in [*firsts.account(), *firsts.customer()]:
        if on_date(c, date, include_month):
            expected.setdefault(unit_of(c), []).append(row_of(c))
            if c.key.resolution != "month":
                on_day.add(unit_of(c))
    assert truth.by_unit == {u: sorted(rows) for u, rows in expected.items()}
    assert truth.date_units() == on_day and on_day
    assert truth.duplicates > 0 and truth.redelivered_by_unit
    assert any(r[1] == "month" for rows in truth.by_unit.values() for r in rows) is include_month
