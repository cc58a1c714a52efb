"""The jobs' Python side without servers: operators are adapters of the counting contract,
drain counters, job naming, restore points, state files, CLI argument errors; no record fails
a job (dead letters of any input), bounded restarts, failing jobs reported with their reason."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from abacus import progress
from abacus.manager import RunOptions, restore_point
from abacus.operators import MAX_HEADER_CHARS, OPERATOR_ERROR, Validate
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
from counting.corpus import invalid_lines, poison_lines, tricky_lines
from counting.text import escape
from settings import load_settings


class _Tag:
    pass


def _validated(line: str, facets: bool = True) -> list[object]:
    tag = _Tag()
    return list(Validate(tag, facets).process_element((line.encode(), False), None))  # type: ignore[arg-type]


@pytest.mark.parametrize("line", tricky_lines())
def test_validate_is_parse_event(line: str) -> None:
    out = _validated(line)
    assert len(out) == 1
    parsed = parse_event(line.encode())
    if isinstance(parsed, Rejection):
        side, row = out[0]  # type: ignore[misc]
        assert isinstance(side, _Tag)
        assert (bytes(row[0]), row[1], row[2], row[3]) == (
            line.encode(),
            parsed.reason.value,
            parsed.detail,
            parsed.event_id or "",
        )
    else:
        event_id, company, customer, statistic, *labels, facets, values = out[0]  # type: ignore[misc]
        assert (event_id, company, customer, statistic) == (
            parsed.event_id,
            parsed.company_id,
            parsed.customer_id,
            parsed.statistic_id,
        )
        # what the SQL forms from the row (every label with every facet pair) are the
        # contract's keys, in its order
        assert [
            AccountKey(company, statistic, r, b, f, v)
            for r, b in zip(RESOLUTIONS, labels, strict=True)
            for f, v in zip(facets, values, strict=True)
        ] == account_keys(parsed)
        assert [
            CustomerKey(company, customer, statistic, r, b)
            for r, b in zip(RESOLUTIONS, labels, strict=True)
        ] == customer_keys(parsed)
    # the customer job's Validate: the same rejection, or the same row up to the labels
    customer = _validated(line, facets=False)
    assert len(customer) == 1
    if isinstance(parsed, Rejection):
        assert [list(x) for x in customer[0][1:]] == [list(x) for x in out[0][1:]]  # type: ignore[index]
    else:
        assert list(customer[0]) == list(out[0])[:7]  # type: ignore[call-overload]


def test_every_reason_goes_to_the_side_output() -> None:
    for line, reason in invalid_lines():
        ((_, row),) = _validated(line)  # type: ignore[misc]
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
    settings = settings.model_copy(
        update={"flink": settings.flink.model_copy(update={"checkpoint_dir": tmp_path})}
    )
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


@pytest.mark.parametrize(
    "args",
    [
        ["job", "run", "nope"],
        ["job", "run", "statistic", "--target", "legacy"],
        ["job", "run", "statistic", "--fresh", "--from-savepoint", "/x"],
        ["job", "run", "statistic", "--window-ms", "0"],
    ],
)
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


# -- no record fails a job; dead letters are writable for any input --------------------------


def _dead_letter(raw: bytes) -> tuple[Any, list[tuple[str, bytes]]]:
    """Validate's side-output row for `raw` and the DLQ headers DeadLetter writes for it."""
    from abacus.operators import dead_letter_headers

    ((tag, row),) = list(Validate(_Tag(), True).process_element((raw, False), None))  # type: ignore[misc,arg-type]
    assert isinstance(tag, _Tag)
    return row, dead_letter_headers(row, "abacus-statistic")


@pytest.mark.parametrize("name,raw", poison_lines(), ids=[n for n, _ in poison_lines()])
def test_every_poison_line_is_counted_or_dead_lettered_writably(name: str, raw: bytes) -> None:
    parsed = parse_event(raw)
    out = list(Validate(_Tag(), True).process_element((raw, False), None))  # type: ignore[arg-type]
    assert len(out) == 1
    if not isinstance(parsed, Rejection):
        assert out[0][0] == parsed.event_id  # type: ignore[index]
        return
    row, headers = _dead_letter(raw)
    assert bytes(row[0]) == raw  # the original bytes, whatever they are
    for _, value in headers:
        value.decode("utf-8")  # strict: every header is UTF-8
    got = {k: v.decode() for k, v in headers}
    assert got["reason"] == parsed.reason.value
    event_id = parsed.event_id or ""
    text, escaped = escape(event_id)
    assert got["event_id"] == text[: MAX_HEADER_CHARS["event_id"]]
    assert ("escaped" in got) == (escaped or escape(parsed.detail)[1])
    if len(text) > MAX_HEADER_CHARS["event_id"]:
        assert f"event_id={len(text)}" in got["truncated"].split(",")
    assert all(len(got[h]) <= MAX_HEADER_CHARS[h] for h in MAX_HEADER_CHARS)


def test_a_lone_surrogate_event_id_is_escaped_and_said_so() -> None:
    raw = (
        b'{"event_id": "\\ud800", "company_id": "C", "customer_id": "U", '
        b'"statistic_id": "S", "timestamp": 1700000000}'
    )
    _, headers = _dead_letter(raw)
    got = dict(headers)
    assert got["event_id"] == b"\\ud800" and got["escaped"] == b"1"
    assert got["reason"] == b"not_json" and "truncated" not in got


def test_a_huge_event_id_is_cut_and_said_so() -> None:
    raw = json.dumps({"event_id": "\ud800" * 100_000, "company_id": "C"}).encode()
    _, headers = _dead_letter(raw)
    got = {k: v.decode() for k, v in headers}
    assert got["event_id"] == "\\ud800" * 42 + "\\ud8"  # the escaped text's first 256
    assert got["truncated"] == "event_id=600000" and got["escaped"] == "1"


def test_an_operator_error_dead_letters_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong in Validate on a record dead-letters it (operator_error, the
    exception's type and message, escaped) instead of failing the job."""
    import abacus.operators

    def broken(*_: object) -> object:
        raise RuntimeError("labels exploded on \udc80" + "!" * 5000)

    monkeypatch.setattr(abacus.operators, "bucket_labels", broken)
    line = tricky_lines()[0].encode()
    row, headers = _dead_letter(line)
    got = {k: v.decode() for k, v in headers}
    assert bytes(row[0]) == line
    assert got["reason"] == OPERATOR_ERROR
    assert got["detail"].startswith("RuntimeError: labels exploded on \\udc80!!")
    assert len(got["detail"]) == MAX_HEADER_CHARS["detail"]
    assert got["truncated"].startswith("detail=") and got["escaped"] == "1"
    assert got["event_id"] == parse_event(line).event_id  # type: ignore[union-attr]

    class Hostile(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    def hostile(*_: object) -> object:
        raise Hostile

    monkeypatch.setattr(abacus.operators, "bucket_labels", hostile)
    _, headers = _dead_letter(line)
    assert dict(headers)["detail"] == b"Hostile: <message not printable>"


# -- bounded restarts; a failing job is reported at once, with its reason --------------------


def test_the_restart_strategy_is_bounded() -> None:
    from abacus.environment import restart_strategy

    settings = load_settings()
    flink = settings.flink.model_copy(
        update={
            "restart_attempts": 3,
            "restart_delay_s": 5,
            "restart_max_delay_s": 60,
            "restart_reset_s": 600,
        }
    )
    conf = restart_strategy(settings.model_copy(update={"flink": flink}))
    prefix = "restart-strategy.exponential-delay."
    assert conf["restart-strategy.type"] == "exponential-delay"
    assert conf[prefix + "attempts-before-reset-backoff"] == "3"
    assert (conf[prefix + "initial-backoff"], conf[prefix + "max-backoff"]) == (
        "5000 ms",
        "60000 ms",
    )
    none = restart_strategy(
        settings.model_copy(update={"flink": flink.model_copy(update={"restart_attempts": 0})})
    )
    assert none == {"restart-strategy.type": "none"}


_TRACE = """\
java.util.concurrent.ExecutionException: o.a.f.r.client.JobExecutionException: Job failed.
\tat java.base/java.util.concurrent.CompletableFuture.reportGet(CompletableFuture.java:396)
Caused by: o.a.f.r.JobException: Recovery is suppressed by ExponentialDelayRestart(...)
\tat o.a.f.r.executiongraph.failover.ExecutionFailureHandler.handleFailure(...)
Caused by: pemja.core.PythonException: <class 'ValueError'>: boom on \\ud800 record 3
\tat /tmp/h12/exp.map(exp.py:7)
"""


def test_the_reason_is_the_root_exception_line() -> None:
    from abacus.failures import error_line, root_cause

    assert root_cause(_TRACE) == "ValueError: boom on \\ud800 record 3"
    assert (
        root_cause("org.x.AllNodesFailedException: Could not reach any contact point\n\tat x")
        == "org.x.AllNodesFailedException: Could not reach any "
        "contact point"
    )
    assert root_cause("") == "no reason given"
    assert root_cause("Caused by: X: \ud800") == "X: \\ud800"  # always encodable
    assert error_line("INFO all is well\nINFO job running") is None
    assert (
        error_line("Traceback (most recent call last):\n  File x\nOSError: gone\n")
        == "OSError: gone"
    )


def _state(status: str, failures_ago_s: tuple[float, ...] = (), **changes: object) -> JobState:
    now_ms = time.time() * 1000
    return JobState(
        "t-statistic",
        "statistic",
        "shadow",
        1,
        status,
        1.0,
        restarts=len(failures_ago_s),
        failure_times_ms=[int(now_ms - s * 1000) for s in failures_ago_s],
        **changes,
    )  # type: ignore[arg-type]


def test_a_failed_or_restart_looping_job_is_a_problem_with_its_reason() -> None:
    from abacus import manager

    assert manager.problem(_state("RUNNING")) is None
    assert manager.describe(_state("RUNNING")) == "RUNNING"
    one = _state("RUNNING", (30,), error="X: once")
    assert manager.problem(one) is None
    assert manager.describe(one) == "RUNNING (1 restart in the last minute)"
    old = _state("RUNNING", (300, 200, 100), error="X: long ago")
    assert manager.problem(old) is None and manager.describe(old) == "RUNNING"
    looping = _state("RESTARTING", (50, 20, 2), error="X: again")
    assert (
        manager.describe(looping) == "RESTARTING (restart-looping: 3 restarts in the last minute)"
    )
    assert manager.problem(looping) == (
        "job t-statistic is restart-looping (RESTARTING, 3 restarts in the last minute): X: again"
    )
    failed = _state("FAILED", (50, 20, 2), error="AllNodesFailedException: no Cassandra")
    assert manager.describe(failed) == "FAILED"
    assert manager.problem(failed) == (
        "job t-statistic is FAILED after 3 restart(s): AllNodesFailedException: no Cassandra"
    )
    assert manager.problem(_state("STOPPED")) is None


def test_job_status_and_shadow_runs_report_a_failing_job(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from abacus import manager
    from cli import root
    from shadow import monitor

    settings = load_settings()
    settings = settings.model_copy(
        update={"services": settings.services.model_copy(update={"data_dir": tmp_path})}
    )
    failed = _state("FAILED", (5, 3, 1), error="pemja: ValueError: [/bold] \u202e")
    manager.state_file(settings, "t-statistic").write(failed)
    running = _state("RUNNING").replace(name="t-customer", pid=None, remote=None)
    manager.state_file(settings, "t-customer").write(running.replace(status="STOPPED"))

    env = {"ABACUS_SERVICES__DATA_DIR": str(tmp_path), "COLUMNS": "300"}
    table = CliRunner().invoke(root, ["job", "status"], env=env)
    assert table.exit_code == 0, table.output
    assert "FAILED" in table.output and "ValueError: [/bold]" in table.output
    doc = CliRunner().invoke(root, ["job", "status", "--format", "json"], env=env)
    records = {r["name"]: r for r in json.loads(doc.output)}
    assert records["t-statistic"]["problem"].startswith("job t-statistic is FAILED after 3")
    assert records["t-customer"]["problem"] is None

    inst = SimpleNamespace(settings=settings)
    jobs = {"statistic": "t-statistic", "customer": "t-customer"}
    found = monitor.job_problem(inst, jobs)  # type: ignore[arg-type]
    assert found is not None and "FAILED after 3 restart(s): pemja: ValueError" in found
    assert monitor.job_problem(inst, {"customer": "t-customer"}) is None  # type: ignore[arg-type]


def test_a_lost_job_gets_the_error_its_runner_logged_since_it_started(tmp_path: Path) -> None:
    import subprocess
    import sys

    from abacus import manager
    from abacus.state import start_line

    settings = load_settings()
    settings = settings.model_copy(
        update={"services": settings.services.model_copy(update={"data_dir": tmp_path})}
    )
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(gone.stdout)  # a process that has exited
    manager.state_file(settings, "t-customer").write(
        JobState("t-customer", "customer", "shadow", pid, "RUNNING", 1.0)
    )
    log = manager.log_path(settings, "t-customer")
    log.write_text(
        f"INFO {start_line('t-customer', 1)}\nOSError: an earlier run's error\n"
        f"INFO {start_line('t-customer', pid)}\nINFO job t-customer running\n"
    )
    assert manager.status(settings, "t-customer").error is None  # type: ignore[union-attr]
    with log.open("a") as f:
        f.write(
            "Traceback (most recent call last):\n  File x\n"
            "java.lang.OutOfMemoryError: Java heap space\n"
        )
    state = manager.status(settings, "t-customer")
    assert state is not None and state.status == "LOST"
    assert state.error == "java.lang.OutOfMemoryError: Java heap space"
    assert manager.problem(state) == (
        "job t-customer is LOST: java.lang.OutOfMemoryError: Java heap space"
    )


def test_waiting_for_a_drain_stops_at_once_on_a_failed_job(tmp_path: Path) -> None:
    from abacus import manager

    settings = load_settings()
    settings = settings.model_copy(
        update={"services": settings.services.model_copy(update={"data_dir": tmp_path})}
    )
    manager.state_file(settings, "t-statistic").write(
        _state("FAILED", (3, 2, 1), error="X: the sink gave up")
    )
    # the job's problem, not "not drained after 600 s" (nor a server asked for its lag)
    with pytest.raises(manager.JobError, match=r"is FAILED after 3 restart.*X: the sink gave"):
        manager.wait_drained(settings, ["t-statistic"], timeout_s=600)
