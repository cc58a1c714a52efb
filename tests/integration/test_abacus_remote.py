"""The milestone-1 jobs on a remote Flink cluster: a real standalone JobManager and
TaskManager (`flink_cluster.FlinkCluster`), `flink.jobmanager` pointing at its REST API, so
`abacus.manager` submits through Flink's own CLI (`abacus.remote`) instead of a MiniCluster.

1. both jobs submitted to the cluster: the tricky corpus with duplicates equals `recount`,
   and `manager.status` reports each job as the cluster does;
2. stop with a savepoint: the savepoint exists, the cluster finished the job;
3. the statistic job resubmitted from that savepoint, more events: still exact.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abacus import manager
from abacus.manager import RunOptions
from counting.corpus import tricky_lines
from settings.model import Settings
from tests.integration.abacus_runs import (
    Run,
    account_counts,
    customer_counts,
    first_differences,
    generated_events,
    isolated_run,
    recount_of,
)
from tests.integration.flink_cluster import FlinkCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KINDS = ("statistic", "customer")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkCluster]:
    with FlinkCluster(tmp_path_factory.mktemp("flink-cluster"), slots=2) as running:
        yield running


@pytest.fixture(scope="module")
def run(
    settings: Settings,
    services_up: object,
    cluster: FlinkCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    with isolated_run(
        settings,
        f"r{uuid.uuid4().hex[:8]}",
        jobmanager=cluster.address,
        checkpoint_dir=tmp_path_factory.mktemp("checkpoints"),
    ) as state:
        yield state


def _options(run: Run, **changes: Any) -> RunOptions:
    return RunOptions(prefix=run.prefix, window_ms=500, **changes)


def _wait_exact(
    run: Run, cluster: FlinkCluster, kinds: tuple[str, ...], timeout_s: float = 300
) -> None:
    """Drain on a remote cluster is the consumer lag alone, so poll the store itself; a job
    that failed or restarted on the cluster fails the test at once, with the cluster's error."""
    truth = recount_of(run.lines)
    want = {
        "statistic": account_counts(truth.account()),
        "customer": customer_counts(truth.customer()),
    }
    deadline = time.monotonic() + timeout_s
    while True:
        store = run.store()
        got = {
            "statistic": account_counts(store.scan("account")),
            "customer": customer_counts(store.scan("customer")),
        }
        wrong = {
            kind: first_differences(got[kind], want[kind])
            for kind in kinds
            if got[kind] != want[kind]
        }
        if not wrong:
            return
        states = {kind: manager.status(run.settings, run.name(kind)) for kind in kinds}
        assert time.monotonic() < deadline, (wrong, states)
        for kind, state in states.items():
            assert state is not None and state.status in manager.RUNNING, (kind, state)
            assert state.job_id and not cluster.job_errors(state.job_id), (
                kind,
                cluster.job_errors(state.job_id)[:1],
            )
        time.sleep(1)


def test_jobs_submitted_to_the_cluster_equal_recount(run: Run, cluster: FlinkCluster) -> None:
    lines = tricky_lines()
    valid = [line for line in lines if line.startswith('{"event_id": "tricky')]
    run.produce(lines + valid[::7])  # more redeliveries, after their first delivery
    started = [manager.start(run.settings, kind, "shadow", _options(run)) for kind in KINDS]
    for state in started:
        assert state.remote == cluster.address and state.pid is None and state.job_id
    on_cluster = {job["id"]: job["status"] for job in cluster.rest("/jobs")["jobs"]}
    assert {s.job_id for s in started} <= on_cluster.keys()
    _wait_exact(run, cluster, KINDS)
    for kind in KINDS:
        now = manager.status(run.settings, run.name(kind))
        assert now is not None and now.status == "RUNNING" and now.remote == cluster.address
        assert cluster.rest(f"/jobs/{now.job_id}")["state"] == "RUNNING"


def test_stop_with_savepoint_returns_an_existing_savepoint(run: Run, cluster: FlinkCluster) -> None:
    for kind in KINDS:
        stopped = manager.stop(run.settings, run.name(kind), savepoint=True)
        assert stopped.status == "STOPPED" and stopped.savepoint, stopped
        assert (Path(stopped.savepoint) / "_metadata").is_file(), stopped.savepoint
        assert cluster.rest(f"/jobs/{stopped.job_id}")["state"] == "FINISHED"
        assert manager.status(run.settings, run.name(kind)) == stopped


def test_resubmitted_from_the_savepoint_is_exact(run: Run, cluster: FlinkCluster) -> None:
    name = run.name("statistic")
    savepoint = manager.status(run.settings, name).savepoint  # type: ignore[union-attr]
    assert savepoint
    state = manager.start(run.settings, "statistic", "shadow", _options(run))
    assert state.restored_from == savepoint  # the newest savepoint of the job's name
    run.produce(generated_events(seed=4, n=300))
    _wait_exact(run, cluster, ("statistic",))
    manager.stop(run.settings, name)
    assert manager.status(run.settings, name).status == "CANCELED"  # type: ignore[union-attr]
