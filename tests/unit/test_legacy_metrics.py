"""legacy.metrics: its pure helpers, and prometheus_client's multiprocess mode as the worker
uses it (a forked process's counts summed by the main process's endpoint; a dead
process's live gauge leaves the sum; everything removed on close), on loopback only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from counting import Reason
from legacy import deadletter, metrics
from settings.model import Settings
from tests.metrics import Samples, scrape


def test_owner_and_live_file_pids() -> None:
    assert metrics.owner_pid("1234-k3j_x") == 1234
    assert metrics.owner_pid("not-ours") is None
    assert metrics.live_file_pid("gauge_livesum_42.db") == 42
    assert metrics.live_file_pid("gauge_livemax_7.db") == 7
    assert metrics.live_file_pid("counter_42.db") is None  # counts stay: they happened
    assert metrics.live_file_pid("gauge_sum_42.db") is None


def test_stale_dirs_are_those_of_gone_processes() -> None:
    alive = {10, 11}.__contains__
    assert metrics.stale_dirs(["10-a", "12-b", "x", "13-c"], alive) == ["12-b", "13-c"]


def test_dead_writers_never_include_this_process() -> None:
    names = ["gauge_livesum_5.db", "gauge_livesum_6.db", "counter_7.db", "gauge_livesum_8.db"]
    assert metrics.dead_writers(names, alive={6}.__contains__, me=8) == {5}


def test_every_dead_letter_reason_is_known_once() -> None:
    reasons = metrics.DEAD_LETTER_REASONS
    assert len(reasons) == len(set(reasons))
    assert {r.value for r in Reason} <= set(reasons)
    assert set(deadletter.MESSAGE_REASONS + deadletter.FAILURE_REASONS) <= set(reasons)


def test_calls_do_nothing_while_metrics_are_off() -> None:
    assert not metrics.enabled()
    metrics.task("done")
    metrics.dead_lettered("not_json")
    metrics.flusher_started()
    metrics.flushed(True, 0.1, had_work=True)
    with metrics.running():
        pass
    assert not metrics.enabled()


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    s = Settings()
    services = s.services.model_copy(update={"data_dir": tmp_path})
    return s.model_copy(update={"services": services})


def test_a_forked_process_counts_are_summed_and_cleaned_up(local: Settings) -> None:
    exporter = metrics.start(local, "unit@host", {"worker": "unit@host"})
    assert exporter is not None
    try:
        target = json.loads(exporter.target.read_text())
        assert target[0]["targets"] == [exporter.address]
        assert target[0]["labels"]["worker"] == "unit@host"
        assert exporter.directory.parent == metrics.metrics_root(local)
        metrics.task("done")
        metrics.dead_lettered("content_disallowed")
        said, say = os.pipe()  # the child says it holds a task
        hold, held = os.pipe()  # never written: the child waits on it until it is killed
        pid = os.fork()
        if pid == 0:  # the child: a pool process, killed in the middle of a task
            try:
                os.close(said)
                metrics.after_fork()
                for _ in range(3):
                    metrics.task("done")
                metrics.dead_lettered("not_json")
                metrics.rows_written("customer", 5)
                with metrics.running():
                    os.write(say, b"x")
                    os.read(hold, 1)
            except BaseException as exc:
                os.write(2, f"child: {exc!r}\n".encode())
            finally:
                os._exit(1)
        os.close(say)  # the child's death ends the read below, whatever it did
        assert os.read(said, 1) == b"x", "the child died before it held a task"
        during = scrape(exporter.address)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        after = scrape(exporter.address)
        for fd in (said, hold, held):
            os.close(fd)
    finally:
        exporter.close()

    def value(found: Samples, name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value(during, "abacus_legacy_tasks_in_progress") == 1
    for found in (during, after):
        assert value(found, "abacus_legacy_tasks_total", outcome="done") == 4
        assert value(found, "abacus_legacy_tasks_total", outcome="failed") == 0
        assert value(found, "abacus_legacy_dead_lettered_total", reason="not_json") == 1
        assert value(found, "abacus_legacy_dead_lettered_total", reason="content_disallowed") == 1
        assert value(found, "abacus_legacy_dead_lettered_total", reason="redis_error") == 0
        assert value(found, "abacus_legacy_counter_rows_written_total", level="customer") == 5
    assert value(after, "abacus_legacy_tasks_in_progress") == 0  # the dead child left the sum
    assert not any(name.startswith("abacus_legacy_bertha_") for name, _ in during)  # no flusher
    assert not exporter.target.exists()
    assert not exporter.directory.exists()
    assert not metrics.enabled()
    assert metrics.MULTIPROC_VAR not in os.environ


def test_a_killed_process_directory_is_removed_by_the_next_start(local: Settings) -> None:
    root = metrics.metrics_root(local)
    gone = root / "999999999-abc"  # no such pid
    gone.mkdir(parents=True)
    (gone / "counter_999999999.db").write_bytes(b"\0" * 16)
    exporter = metrics.start(local, "unit2@host", {"worker": "unit2@host"})
    assert exporter is not None
    try:
        assert not gone.exists()
        assert exporter.directory.exists()
    finally:
        exporter.close()


def test_off_when_the_port_setting_is_none(local: Settings) -> None:
    off = local.model_copy(
        update={"legacy": local.legacy.model_copy(update={"metrics_port": None})}
    )
    assert metrics.start(off, "unit3@host", {}) is None
    assert not metrics.metrics_root(off).exists()


def test_a_flusher_exports_its_flushes_and_age_and_no_pending_keys_without_redis(
    local: Settings,
) -> None:
    from services.targets import free_port

    nowhere = local.redis.model_copy(update={"port": free_port()})  # nothing listens there
    s = local.model_copy(update={"redis": nowhere})
    exporter = metrics.start(s, "flusher-unit", {"flusher": "flusher-unit"})
    assert exporter is not None
    try:
        before = scrape(exporter.address)
        metrics.flusher_started()
        metrics.flushed(True, 0.02, had_work=True)
        metrics.batch_flushed()
        metrics.rows_written("account", 7)
        metrics.flushed(False, 0.5, had_work=True)
        after = scrape(exporter.address)
    finally:
        exporter.close()
    assert not [k for k in before if k[0].startswith("abacus_legacy_bertha_")]  # no flusher yet

    def value(name: str, **labels: str) -> float | None:
        return after.get((name, tuple(sorted(labels.items()))))

    assert value("abacus_legacy_bertha_flushes_total", outcome="ok") == 1
    assert value("abacus_legacy_bertha_flushes_total", outcome="failed") == 1
    assert value("abacus_legacy_bertha_batches_total", outcome="written") == 1
    assert value("abacus_legacy_bertha_batches_total", outcome="dropped") == 0
    assert value("abacus_legacy_bertha_flush_duration_seconds_count") == 2
    assert value("abacus_legacy_counter_rows_written_total", level="account") == 7
    age = value("abacus_legacy_bertha_flush_age_seconds")
    assert age is not None and age >= 0
    # Redis does not answer: its two gauges are left out, the rest is served
    assert value("abacus_legacy_bertha_pending_keys") is None
    assert value("abacus_legacy_bertha_unfinished_batches") is None
