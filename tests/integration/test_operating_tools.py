"""The standard tools of the ecosystem on our running parts (issue 15, item 4): Celery's own
`celery -A legacy.celery_app inspect|events` against an `abacus legacy worker`, and a local
job's Flink web UI named by `abacus job status`.

The tools run as subprocesses with the isolated installation's settings in their
environment (`services.procs.child_env`), as an operator's shell would have them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abacus import manager
from counting.generate import GeneratorConfig, generate
from legacy.app import WorkerOptions
from legacy.producer import publish_lines
from legacy.worker import WorkerProcess, start_worker
from services import procs
from services.procs import child_env
from settings.model import Settings
from tests.integration.abacus_runs import isolated_run, job_status
from tests.integration.legacy_env import Env, isolated
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def celery(settings: Settings, *args: str) -> Any:
    """`celery -A legacy.celery_app ARGS --json` as an operator runs it; its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "legacy.celery_app", *args, "--json"],
        env=child_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "No nodes replied" in done.stderr:
        return None  # none yet: a worker that is still starting
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    with isolated(settings, tmp_path, names="ops") as e:
        # task events on, as an operator who wants Flower would set legacy.task_events
        legacy = e.settings.legacy.model_copy(update={"task_events": True})
        e.settings = e.settings.model_copy(update={"legacy": legacy})
        yield e


@pytest.fixture
def node() -> str:
    """The Celery node name of the test's worker."""
    return f"ops-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


@pytest.fixture
def worker(env: Env, node: str) -> Iterator[WorkerProcess]:
    options = WorkerOptions(concurrency=1, pool="threads", flush_interval_s=0.5, hostname=node)
    process = start_worker(env.settings, options, env.tmp / "worker.log")
    try:
        yield process
    finally:
        process.stop()


def test_celery_inspect_reaches_the_running_worker(
    env: Env, worker: WorkerProcess, node: str
) -> None:
    answers = wait_until(
        "the worker answers `celery inspect ping`",
        lambda: worker.alive() and celery(env.settings, "inspect", "ping", "--timeout", "2"),
        timeout_s=120,
    )
    assert worker.alive(), worker.log_tail()
    # this installation's worker only: each has its own control exchange
    assert answers == {node: {"ok": "pong"}}
    queues = celery(env.settings, "inspect", "active_queues", "--timeout", "5")
    assert [q["name"] for q in queues[node]] == [env.settings.rabbitmq.legacy_queue]
    stats = celery(env.settings, "inspect", "stats", "--timeout", "5")
    assert stats[node]["pool"]["max-concurrency"] == 1
    assert "password" not in stats[node]["broker"]  # Celery drops it, as we never print it


def test_celery_events_sees_a_task_succeed(env: Env, worker: WorkerProcess, node: str) -> None:
    dump = procs.spawn(
        env.settings,
        ["-m", "celery", "-A", "legacy.celery_app", "events", "--dump"],
        env.tmp / "events.log",
        cwd=REPO,
    )
    events = procs.Child(dump, env.tmp / "events.log")
    try:
        # listening once it shows the worker's heartbeats (sent only with task events on)
        wait_until(
            "`celery events --dump` shows the worker's heartbeats",
            lambda: events.alive() and "heartbeat" in events.log_tail(),
            timeout_s=120,
        )
        config = GeneratorConfig(n=1, seed=15, companies=1, customers=1, duplicate_share=0.0)
        (line,) = [json.dumps(e) for e in generate(config)]
        assert publish_lines(env.settings.rabbitmq, [line]).published == 1

        def succeeded() -> list[str]:
            return [s for s in events.log_tail().splitlines() if "task succeeded" in s]

        (seen,) = wait_until("a task-succeeded event", succeeded, timeout_s=120)
        assert seen.startswith(node + " ") and "result='counted'" in seen, seen
    finally:
        events.stop()


@pytest.mark.slow
def test_job_status_names_a_local_jobs_flink_web_ui(
    settings: Settings, services_up: object
) -> None:
    with isolated_run(settings, f"o{uuid.uuid4().hex[:8]}") as run:
        started = manager.start(run.settings, "statistic", "shadow", run.options())
        job = job_status(run.settings, started.name)
        web_ui = job["web_ui"]
        assert web_ui == f"http://127.0.0.1:{job['rest_port']}/", job
        with urllib.request.urlopen(web_ui + "overview", timeout=30) as response:
            overview = json.load(response)
        assert overview["jobs-running"] == 1 and overview["flink-version"], overview
        with urllib.request.urlopen(web_ui + f"jobs/{started.job_id}", timeout=30) as response:
            flink_job = json.load(response)
        assert flink_job["name"] == f"abacus-{started.name}", flink_job["name"]
        with urllib.request.urlopen(web_ui, timeout=30) as response:  # the dashboard itself
            assert "<title>Apache Flink Web Dashboard</title>" in response.read().decode()
