"""The jobs' Python side without servers: operators are adapters of the counting contract,
drain counters, the sink's roll-up, job naming, restore points, state files, CLI argument errors."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from abacus import progress
from abacus.manager import RunOptions, restore_point
from abacus.operators import Counted, Validate, rolled_up
from abacus.pipeline import JobSpec, job_name, latest_checkpoint
from abacus.state import JobState, StateFile
from counting import (
    RESOLUTIONS,
    AccountKey,
    CustomerKey,
    Rejection,
    account_keys,
    customer_keys,
    parse_event,
)
from counting.buckets import LABEL_WIDTH
from counting.corpus import invalid_lines, tricky_lines
from settings import load_settings


class _Tag:
    pass


def _validated(line: str) -> list[object]:
    tag = _Tag()
    return list(Validate(tag).process_element(line.encode(), None))  # type: ignore[arg-type]


@pytest.mark.parametrize("line", tricky_lines())
def test_validate_is_parse_event(line: str) -> None:
    out = _validated(line)
    assert len(out) == 1
    parsed = parse_event(line.encode())
    if isinstance(parsed, Rejection):
        side, row = out[0]  # type: ignore[misc]
        assert isinstance(side, _Tag)
        assert (bytes(row[0]), row[1], row[2], row[3]) == (
            line.encode(), parsed.reason.value, parsed.detail, parsed.event_id or "")
    else:
        event_id, company, customer, statistic, *labels, facets, values = out[0]  # type: ignore[misc]
        assert (event_id, company, customer, statistic) == (
            parsed.event_id, parsed.company_id, parsed.customer_id, parsed.statistic_id)
        # what the SQL forms from the row (every label with every facet pair) are the
        # contract's keys, in its order
        assert [AccountKey(company, statistic, r, b, f, v)
                for r, b in zip(RESOLUTIONS, labels, strict=True)
                for f, v in zip(facets, values, strict=True)] == account_keys(parsed)
        assert [CustomerKey(company, customer, statistic, r, b)
                for r, b in zip(RESOLUTIONS, labels, strict=True)] == customer_keys(parsed)


def test_every_reason_goes_to_the_side_output() -> None:
    for line, reason in invalid_lines():
        (_, row), = _validated(line)  # type: ignore[misc]
        assert row[1] == reason


def test_counted_adds_to_the_drain_counter(tmp_path: Path) -> None:
    counted = Counted(str(tmp_path))
    counted.open(None)
    assert not counted.is_deterministic()
    assert counted.eval(15) is True and counted.eval(3) is True
    assert progress.read(tmp_path) == progress.Progress(18, 0)


def test_progress_counters_sum_instances(tmp_path: Path) -> None:
    a, b, w = (progress.Counter(str(tmp_path), k) for k in ("fanned", "fanned", "written"))
    a.add(3)
    b.add(4)
    w.add(7)
    assert progress.read(tmp_path) == progress.Progress(7, 7)
    a.add(1)
    assert progress.read(tmp_path).pending == 1


def test_job_names_and_groups() -> None:
    assert job_name("statistic", "shadow") == "statistic"
    assert job_name("customer", "serving", "t1-") == "t1-customer-serving"
    spec = JobSpec("statistic", "shadow", "statistic", 1000, 200, 7, 40, 4, "", 0)
    assert (spec.group_id, spec.source, spec.state_ttl_s) == (
        "abacus-statistic", "abacus-statistic", 40)


def test_latest_restore_point_is_the_newest(tmp_path: Path) -> None:
    settings = load_settings()
    settings = settings.model_copy(update={"flink": settings.flink.model_copy(
        update={"checkpoint_dir": tmp_path})})
    assert latest_checkpoint(settings, "statistic") is None
    old = tmp_path / "statistic" / "abc" / "chk-3"
    new = tmp_path / "statistic" / "savepoints" / "savepoint-abc-1"
    for i, path in enumerate((old, new)):
        path.mkdir(parents=True)
        (path / "_metadata").write_bytes(b"x")
        stamp = time.time() - 100 + i
        import os

        os.utime(path, (stamp, stamp))
    assert latest_checkpoint(settings, "statistic") == new
    assert restore_point(settings, "statistic", RunOptions(resume=False)) is None
    with pytest.raises(Exception, match="no savepoint there"):
        restore_point(settings, "statistic", RunOptions(from_savepoint=tmp_path / "nope"))


def test_state_file_round_trip(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "jobs" / "statistic.json")
    state = JobState("statistic", "statistic", "shadow", 1, "RUNNING", 1.0, job_id="j")
    file.write(state)
    assert file.read() == state
    assert json.loads(file.path.read_text())["status"] == "RUNNING"


@pytest.mark.parametrize("args", [
    ["job", "run", "nope"],
    ["job", "run", "statistic", "--target", "legacy"],
    ["job", "run", "statistic", "--fresh", "--from-savepoint", "/x"],
    ["job", "run", "statistic", "--window-ms", "0"],
])
def test_wrong_arguments_exit_non_zero_with_a_hint(args: list[str]) -> None:
    from cli import root

    result = CliRunner().invoke(root, args)
    assert result.exit_code == 2
    assert "Error:" in result.output


def test_stop_of_an_unknown_job_says_what_to_do(tmp_path: Path) -> None:
    from cli import root

    env = {"ABACUS_SERVICES__DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(root, ["job", "stop", "nope"], env=env)
    assert result.exit_code == 1
    assert "abacus job status" in result.output


# -- the sink's roll-up of hour counts to day and month -------------------------------------

_hours = st.sampled_from(["2025-12-31T23", "2026-01-01T00", "2026-01-01T05", "2026-03-29T02"])
_account_rows = st.lists(st.tuples(
    st.sampled_from(["C1", "C2"]), st.just("opened"), st.just("hour"), _hours,
    st.sampled_from(["", "campaign"]), st.sampled_from(["", "a", "b"]),
    st.integers(0, 5), st.integers(0, 3)), max_size=30)


@given(_account_rows)
def test_hour_counts_roll_up_and_uniques_do_not(rows: list[tuple]) -> None:
    # unique increments of day and month keys arrive from the uniqueness step, not from hours
    day_uniques = [(*r[:2], "day", r[3][:10], *r[4:6], 0, 1) for r in rows[::2]]
    got = rolled_up([*rows, *day_uniques], 6, 2)
    want_count: Counter[tuple] = Counter()
    want_uniques: Counter[tuple] = Counter()
    for r in rows:
        for res in ("hour", "day", "month"):
            want_count[(*r[:2], res, r[3][:LABEL_WIDTH[res]], *r[4:6])] += r[6]
        want_uniques[r[:6]] += r[7]
    for r in day_uniques:
        want_uniques[r[:6]] += 1
    keys = {k for k in {*want_count, *want_uniques} if want_count[k] or want_uniques[k]}
    assert {k for k, (c, u) in got.items() if c or u} == keys
    for key in keys:
        assert got[key] == [want_count[key], want_uniques[key]]


def test_customer_rows_roll_up_to_day_and_month() -> None:
    rows = [("C1", "u1", "opened", "hour", "2026-01-01T00", 2),
            ("C1", "u1", "opened", "hour", "2026-01-01T05", 1),
            ("C1", "u1", "opened", "hour", "2025-12-31T23", 4)]
    got = rolled_up(rows, 5, 3)
    assert got[("C1", "u1", "opened", "day", "2026-01-01")] == [3]
    assert got[("C1", "u1", "opened", "month", "2026-01")] == [3]
    assert got[("C1", "u1", "opened", "month", "2025-12")] == [4]
    assert got[("C1", "u1", "opened", "hour", "2026-01-01T05")] == [1]
    assert len(got) == 3 + 2 + 2
