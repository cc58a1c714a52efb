"""compare.truth_spool: the truth recounted in a child process gives what `truth_of` gives
in process, in the plan's order, the truth's own units last; its errors reach the parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compare.plan import Plan, select
from compare.truth import truth_of
from compare.truth_spool import Selection, Source, TruthSpool
from counting.corpus import tricky_lines
from counting.generate import GeneratorConfig, generate

DAY = "2025-10-20"


def _events_file(tmp_path: Path) -> Path:
    start = 1_760_918_400  # 2025-10-20T00:00:00Z
    config = GeneratorConfig(
        n=400,
        seed=5,
        companies=4,
        customers=30,
        statistics=3,
        facets=2,
        timezones=("UTC", "Asia/Tokyo"),
        duplicate_share=0.05,
        start_ts=start - 3_600,
        span_s=86_400 + 7_200,
    )
    lines = [json.dumps(e) for e in generate(config)]
    lines += [line if isinstance(line, str) else line.decode() for line in tricky_lines()]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("include_month", "companies"), [(False, ()), (True, ("COM0001",))])
def test_spool_is_truth_of_in_plan_order_with_the_truths_units_last(
    tmp_path: Path, include_month: bool, companies: tuple[str, ...]
) -> None:
    events = _events_file(tmp_path)
    want = truth_of(events.read_bytes().splitlines(), DAY, include_month, "file:x")
    levels = ("account", "customer")
    everything = select(want.date_units(), levels, companies, ())
    planned = everything[::2]  # the stores' units: some of the truth's, and one it lacks
    planned.append(("account", ("COM0001", "no_such_statistic")))
    spool = TruthSpool(
        Source("file:x", path=events),
        Selection(DAY, include_month, levels, companies, ()),
        tmp_path / "truth.spool",
    )
    try:
        Plan(planned, complete=False).save(tmp_path / "plan.json")
        spool.send_plan(tmp_path / "plan.json")
        extra = spool.wait()
        assert extra == [u for u in everything if u not in set(planned)] and extra
        got = list(spool.units())
    finally:
        spool.close()
    assert [u for u, _, _ in got] == [*planned, *extra]
    for unit, rows, redelivered in got:
        assert rows == want.by_unit.get(unit, [])
        assert redelivered == want.redelivered_by_unit.get(unit, [])
    assert spool.stats == want.stats()
    assert want.duplicates and want.rejected
    assert not (tmp_path / "truth.spool").exists()


def test_an_error_of_the_child_is_raised_in_the_parent(tmp_path: Path) -> None:
    spool = TruthSpool(
        Source("file:x", path=tmp_path),  # a directory: no lines to read
        Selection(DAY, False, ("account",), (), ()),
        tmp_path / "truth.spool",
    )
    try:
        spool.send_plan(tmp_path / "plan.json")
        with pytest.raises(IsADirectoryError):
            spool.wait()
    finally:
        spool.close()
