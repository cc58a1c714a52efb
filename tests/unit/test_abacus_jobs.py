"""The jobs' Python side without servers: operators are adapters of the counting contract,
drain counters, job naming, restore points, state files, CLI argument errors."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from abacus import progress
from abacus.manager import RunOptions, restore_point
from abacus.operators import Validate
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
from counting.corpus import invalid_lines, tricky_lines
from settings import load_settings


class _Tag:
    pass


def _validated(line: str, facets: bool = True) -> list[object]:
    tag = _Tag()
    return list(Validate(tag, facets).process_element(line.encode(), None))  # type: ignore[arg-type]


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
    # the customer job's Validate: the same rejection, or the same row up to the labels
    customer = _validated(line, facets=False)
    assert len(customer) == 1
    if isinstance(parsed, Rejection):
        assert [list(x) for x in customer[0][1:]] == [list(x) for x in out[0][1:]]  # type: ignore[index]
    else:
        assert list(customer[0]) == list(out[0])[:7]  # type: ignore[call-overload]


def test_every_reason_goes_to_the_side_output() -> None:
    for line, reason in invalid_lines():
        (_, row), = _validated(line)  # type: ignore[misc]
        assert row[1] == reason


def test_progress_counters_sum_instances(tmp_path: Path) -> None:
    # the files abacus.sink.Progress (Java) writes: one 8-byte little-endian count each
    def counter(name: str, value: int) -> None:
        (tmp_path / name).write_bytes(struct.pack("<q", value))

    counter("fanned-1-a", 3)
    counter("fanned-1-b", 4)
    counter("written-1-c", 7)
    assert progress.read(tmp_path) == progress.Progress(7, 7)
    counter("fanned-1-a", 4)
    assert progress.read(tmp_path).pending == 1


def test_job_names_and_groups() -> None:
    assert job_name("statistic", "shadow") == "statistic"
    assert job_name("customer", "serving", "t1-") == "t1-customer-serving"
    spec = JobSpec("statistic", "shadow", "statistic", 1000, 7, 40, "", 0)
    assert (spec.group_id, spec.source) == ("abacus-statistic", "abacus-statistic")


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


