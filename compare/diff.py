"""The three-way diff of an audit (pure: no I/O): two count stores and the truth.

`diff` merges sides that are streamed in `order` (the level, then the key), so neither side
is ever held whole, and yields one `Mismatch` per key where the two stores disagree or the
truth disagrees with both. Absent keys count as zero (SEMANTICS.md §4: keys with no events
do not exist), but a record keeps `None` for an absent side so "only left" stays visible.

Classes (left against right): `match`, `only_left`, `only_right`, `differs`. A `match`
record exists only when the truth is given and supports neither store (both are wrong).
The truth's verdict: `both`, `left`, `right` or `neither` (exact equality of count and
uniques). `redelivery` names the store whose value equals the count of *deliveries*
(redelivered duplicates counted again, as legacy does, SEMANTICS.md §5) when that differs
from the truth: that is how a legacy mismatch caused by redeliveries shows.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from typing import Any

from counting import AccountCount, AccountKey, CustomerCount, CustomerKey
from counting.exchange import key_record
from storage.rows import COUNT, KEY_WIDTH, Row, key_of_row, row_value

Counted = AccountCount | CustomerCount
Key = AccountKey | CustomerKey
Value = tuple[int, int]  # (count, uniques); uniques is 0 at customer level
SortKey = tuple[int, Key]
Unit = tuple[str, tuple[str, ...]]  # (level, ids): ids of one partition of the date index
# A side of a unit is its rows as a store read returns them (`storage.rows`: the key columns,
# the count, and at account level the uniques); the truth's are made by `storage.row_of`.

CLASSES = ("match", "only_left", "only_right", "differs")
VERDICTS = ("both", "left", "right", "neither")
MEASURES = ("count", "uniques")


def order(counted: Counted) -> SortKey:
    """The order sides are streamed in: account counters first, then by key."""
    return (0 if isinstance(counted, AccountCount) else 1, counted.key)


def value_of(counted: Counted) -> Value:
    return (counted.count, counted.uniques if isinstance(counted, AccountCount) else 0)


def _row_value(row: Row | None) -> Value | None:
    return None if row is None else row_value(row)


# -- tolerance --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """A difference is tolerated when |a - b| <= max(abs, rel * max(|a|, |b|))."""

    abs: float = 0.0
    rel: float = 0.0

    def allows(self, a: int, b: int) -> bool:
        delta = abs(a - b)
        return delta <= self.abs or delta <= self.rel * max(abs(a), abs(b))


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Per measure bounds; the default tolerates nothing."""

    count: Bound = field(default_factory=Bound)
    uniques: Bound = field(default_factory=Bound)

    def allows(self, a: Value | None, b: Value | None) -> bool:
        a, b = a or (0, 0), b or (0, 0)
        return self.count.allows(a[0], b[0]) and self.uniques.allows(a[1], b[1])

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Tolerance:
        """From `MEASURE=BOUND[,BOUND]` specs: `count=5` (absolute), `count=1%` (relative),
        `uniques=2,0.5%` (both; whichever is larger wins). Raises ValueError."""
        bounds = {"count": Bound(), "uniques": Bound()}
        for spec in specs:
            measure, sep, text = spec.partition("=")
            measure = measure.strip()
            if not sep or measure not in bounds:
                raise ValueError(f"tolerance {spec!r}: expected count=N[%] or uniques=N[%]")
            absolute, relative = 0.0, 0.0
            for part in text.split(","):
                m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", part)
                if m is None:
                    raise ValueError(f"tolerance {spec!r}: {part.strip()!r} is not N or N%")
                if m.group(2):
                    relative = float(m.group(1)) / 100
                else:
                    absolute = float(m.group(1))
            bounds[measure] = Bound(absolute, relative)
        return cls(**bounds)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            m: {"abs": b.abs, "rel": b.rel}
            for m, b in (("count", self.count), ("uniques", self.uniques))
        }

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, float]]) -> Tolerance:
        return cls(**{m: Bound(float(b["abs"]), float(b["rel"])) for m, b in data.items()})


EXACT = Tolerance()


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One key the audit reports (see the module docstring for the vocabulary)."""

    kind: str
    key: Key
    left: Value | None
    right: Value | None
    truth: Value | None
    deliveries: Value | None
    supports: str | None
    redelivery: str | None
    defect: bool

    def to_record(self) -> dict[str, Any]:
        """The documented JSON record (compare/README.md, "Mismatch records")."""
        account = isinstance(self.key, AccountKey)
        record: dict[str, Any] = {"class": self.kind, **key_record(self.key)}
        left, right = self.left or (0, 0), self.right or (0, 0)
        for measure, i in (("count", 0), ("uniques", 1)):
            if measure == "uniques" and not account:
                continue
            record[f"left_{measure}"] = None if self.left is None else self.left[i]
            record[f"right_{measure}"] = None if self.right is None else self.right[i]
            record[f"truth_{measure}"] = None if self.truth is None else self.truth[i]
            record[f"delta_{measure}"] = right[i] - left[i]
        record["deliveries_count"] = None if self.deliveries is None else self.deliveries[0]
        record["truth_supports"] = self.supports
        record["redelivery"] = self.redelivery
        record["defect"] = self.defect
        return record


@dataclass(slots=True)
class Tally:
    """What the records alone cannot tell: how many keys were compared, and totals."""

    compared: int = 0  # keys seen on any side
    matched: int = 0  # of those, keys with nothing to report
    left_total: int = 0  # the sum of the counts of each side over the compared keys
    right_total: int = 0
    truth_total: int = 0

    def add(self, other: Tally) -> None:
        self.compared += other.compared
        self.matched += other.matched
        self.left_total += other.left_total
        self.right_total += other.right_total
        self.truth_total += other.truth_total

    def remove(self, records: Iterable[Mismatch]) -> None:
        """Take back what these records of compared keys added (before a re-read of them)."""
        for m in records:
            self.compared -= 1
            self.left_total -= m.left[0] if m.left else 0
            self.right_total -= m.right[0] if m.right else 0
            self.truth_total -= m.truth[0] if m.truth else 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Tally:
        return cls(**data)


# -- the diff ---------------------------------------------------------------------------

_LEFT, _RIGHT, _TRUTH, _REDELIVERED = range(4)


def _tagged(items: Iterable[Counted], tag: int) -> Iterator[tuple[SortKey, int, Value]]:
    for counted in items:
        yield order(counted), tag, value_of(counted)


def classify(
    key: Key,
    left: Value | None,
    right: Value | None,
    truth: Value | None,
    redelivered: Value | None,
    has_truth: bool,
    tolerance: Tolerance = EXACT,
    allow_redeliveries: bool = False,
) -> Mismatch | None:
    """The record of one key, or None when there is nothing to report."""
    lv, rv = left or (0, 0), right or (0, 0)
    if lv == rv:
        kind = "match"
    elif right is None:
        kind = "only_left"
    elif left is None:
        kind = "only_right"
    else:
        kind = "differs"
    supports = redelivery = deliveries = None
    if has_truth:
        tv = truth or (0, 0)
        left_ok, right_ok = lv == tv, rv == tv
        supports = (
            "both"
            if left_ok and right_ok
            else "left"
            if left_ok
            else "right"
            if right_ok
            else "neither"
        )
        if redelivered is not None:
            # a redelivery repeats its event: it adds to the count, never a new customer
            deliveries = (tv[0] + redelivered[0], tv[1] if truth is not None else redelivered[1])
            if deliveries != tv:
                if lv == deliveries and not left_ok:
                    redelivery = "left"
                elif rv == deliveries and not right_ok:
                    redelivery = "right"
    if kind == "match" and supports in (None, "both"):
        return None
    defect = not tolerance.allows(lv, rv)
    if has_truth and not (tolerance.allows(lv, truth) or tolerance.allows(rv, truth)):
        defect = True
    if defect and allow_redeliveries and redelivery is not None:
        other = rv if redelivery == "left" else lv
        defect = not tolerance.allows(other, truth)
    return Mismatch(kind, key, left, right, truth, deliveries, supports, redelivery, defect)


def diff(
    left: Iterable[Counted],
    right: Iterable[Counted],
    truth: Iterable[Counted] | None = None,
    redelivered: Iterable[Counted] | None = None,
    *,
    tolerance: Tolerance = EXACT,
    allow_redeliveries: bool = False,
    tally: Tally | None = None,
) -> Iterator[Mismatch]:
    """Merge the sides (each sorted by `order`) and yield what disagrees, in key order.

    `truth` is the reference count of the keys (None: no truth); `redelivered` the counts of
    duplicate deliveries alone (so deliveries = truth + redelivered). `tally` receives the
    number of keys compared and matched and the total counts of each side.
    """
    tally = tally if tally is not None else Tally()
    has_truth = truth is not None
    streams = [_tagged(left, _LEFT), _tagged(right, _RIGHT)]
    if truth is not None:
        streams.append(_tagged(truth, _TRUTH))
    if redelivered is not None:
        streams.append(_tagged(redelivered, _REDELIVERED))
    merged = heapq.merge(*streams, key=_first)
    for (_, key), group in groupby(merged, key=_first):
        values: list[Value | None] = [None, None, None, None]
        for _, tag, value in group:
            if values[tag] is not None:
                raise ValueError(f"key {key!r} appears twice on one side (streams unsorted?)")
            values[tag] = value
        lv, rv, tv, dv = values
        if lv is None and rv is None and tv is None:
            continue  # only duplicates of a key nobody counts: nothing to compare
        mismatch = _judge(tally, key, lv, rv, tv, dv, has_truth, tolerance, allow_redeliveries)
        if mismatch is not None:
            yield mismatch


def diff_rows(
    unit: Unit,
    left: Sequence[Row],
    right: Sequence[Row],
    truth: Sequence[Row] | None = None,
    redelivered: Sequence[Row] | None = None,
    *,
    tolerance: Tolerance = EXACT,
    allow_redeliveries: bool = False,
    tally: Tally | None = None,
) -> list[Mismatch]:
    """`diff` of one unit whose sides are rows (`Row`; `row_of` for the truth's counters):
    the records in key order.

    A key has at most one row per side, so a row found on every side is a key every side
    agrees on: those are tallied by whole-row comparison (list equality when the sides are
    equal, as they mostly are, else set intersection), and only the other keys are looked
    at one by one. That is the common case of an audit, and what makes it fast."""
    tally = tally if tally is not None else Tally()
    has_truth = truth is not None
    if left == right and (truth is None or truth == left):
        _tally_agreed(tally, left, has_truth)
        return []
    agreed = (
        set(left).intersection(right, truth) if truth is not None else set(left).intersection(right)
    )
    _tally_agreed(tally, agreed, has_truth)
    ls, rs, ts = (
        {r[:KEY_WIDTH]: r for r in rows if r not in agreed} for rows in (left, right, truth or ())
    )
    ds = {r[:KEY_WIDTH]: r for r in redelivered or ()}
    out = []
    for sub in ls.keys() | rs.keys() | ts.keys():
        mismatch = _judge(
            tally,
            key_of_row(*unit, sub),
            _row_value(ls.get(sub)),
            _row_value(rs.get(sub)),
            _row_value(ts.get(sub)),
            _row_value(ds.get(sub)),
            has_truth,
            tolerance,
            allow_redeliveries,
        )
        if mismatch is not None:
            out.append(mismatch)
    out.sort(key=_key)
    return out


def _tally_agreed(tally: Tally, rows: Iterable[Row], has_truth: bool) -> None:
    """Keys on which every side has the same row."""
    n = total = 0
    for row in rows:
        n += 1
        total += row[COUNT] or 0
    tally.compared += n
    tally.matched += n
    tally.left_total += total
    tally.right_total += total
    tally.truth_total += total if has_truth else 0


def _judge(
    tally: Tally,
    key: Key,
    lv: Value | None,
    rv: Value | None,
    tv: Value | None,
    dv: Value | None,
    has_truth: bool,
    tolerance: Tolerance,
    allow_redeliveries: bool,
) -> Mismatch | None:
    """Tally one compared key; its record, if any."""
    tally.compared += 1
    tally.left_total += lv[0] if lv else 0
    tally.right_total += rv[0] if rv else 0
    tally.truth_total += tv[0] if tv else 0
    mismatch = classify(key, lv, rv, tv, dv, has_truth, tolerance, allow_redeliveries)
    if mismatch is None:
        tally.matched += 1
    return mismatch


def _key(mismatch: Mismatch) -> Key:
    return mismatch.key


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]
