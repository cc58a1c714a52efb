"""compare.read_ahead: the plan's chunks in order, read ahead of the consumer no further than
the row bound, the truth's units read once the plan is extended."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from compare.diff import Unit
from compare.plan import Plan
from compare.read_ahead import ReadAhead, Sides

ROWS = 4  # rows per unit and side in `_reader`


def _units(n: int) -> list[Unit]:
    return [("account", (f"COM{i:04d}", "s")) for i in range(n)]


class _Reader:
    """Reads each unit as ROWS rows on two sides (equal but for unit 3); checks the bound."""

    def __init__(self, chunk_rows_max: int) -> None:
        self.lock = threading.Lock()
        self.reads: list[list[Unit]] = []
        self.consumed = 0
        self.chunk_rows_max = chunk_rows_max

    def __call__(self, units: list[Unit]) -> Sides:
        with self.lock:
            self.reads.append(units)
            ahead = len(self.reads) - self.consumed
        assert ahead <= self.chunk_rows_max, "read further ahead than the bound"
        left = {u: [(u[1][0], i) for i in range(ROWS)] for u in units}
        right = {u: [(u[1][0], i + (u == _units(4)[3])) for i in range(ROWS)] for u in units}
        return [left, right]


@pytest.mark.parametrize("start", [0, 3])
def test_chunks_in_plan_order_then_the_truths_units(tmp_path: Path, start: int) -> None:
    units = _units(15)
    plan = Plan(units[:10], complete=False)
    path = tmp_path / "plan.json"
    plan.save(path)
    # 4 units a chunk: 16 rows once the sides are shared, so 20 rows hold 2 chunks; one
    # more is read while they wait, and one more may be, while the consumer takes one
    reader = _Reader(chunk_rows_max=4)
    chunks = ReadAhead(reader, plan, start, 4, max_rows=20)
    got = []
    try:
        it = iter(chunks)
        first = next(it)
        got.append(first)
        with reader.lock:
            reader.consumed += 1
        chunks.extend(units[10:], path)
        for chunk in it:
            got.append(chunk)
            with reader.lock:
                reader.consumed += 1
    finally:
        chunks.close()
    assert [u for c in got for u in c[1]] == units[start:]
    # each chunk says where it starts (a chunk read before the extension ends with the
    # stores' part, one read after may cross it)
    assert [c[0] for c in got] == [start + sum(len(c[1]) for c in got[:i]) for i in range(len(got))]
    assert all(len(c[1]) <= 4 for c in got)
    assert Plan.load(path) == Plan(units, complete=True)
    for _, chunk_units, (left, right) in got:
        for unit in chunk_units:
            assert (left[unit] is right[unit]) == (unit != units[3])  # equal sides: one list
    assert json.loads(path.read_text())["complete"]


def test_a_read_error_reaches_the_consumer(tmp_path: Path) -> None:
    def failing(units: list[Unit]) -> Sides:
        raise TimeoutError("Cassandra too slow")

    chunks = ReadAhead(failing, Plan(_units(3), complete=True), 0, 2, max_rows=10)
    try:
        with pytest.raises(TimeoutError):
            list(chunks)
    finally:
        chunks.close()


def test_chunks_aim_at_a_number_of_rows_whatever_the_units_hold() -> None:
    """Large units make small chunks, small units large ones (up to `size`)."""
    units = _units(300)

    def read(chunk: list[Unit]) -> Sides:
        rows = {u: [(u[1][0], i) for i in range(1000 if u in units[:40] else 1)] for u in chunk}
        return [rows, {u: list(r) for u, r in rows.items()}]

    chunks = ReadAhead(read, Plan(units, complete=True), 0, 64, max_rows=10**9, chunk_rows=4000)
    try:
        sizes = [len(c[1]) for c in chunks]
    finally:
        chunks.close()
    assert sum(sizes) == len(units)
    assert sizes[:3] == [16, 2, 2]  # 16 units of 2 x 1000 rows: 2 units make 4000 rows
    assert max(sizes) == 64  # units of 2 x 1 row: as many as a chunk may hold
