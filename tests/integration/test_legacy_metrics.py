"""A legacy worker's Prometheus metrics on the shared servers: a prefork pool's children
summed by the main process's endpoint, announced in the target file the local Prometheus
reads, and removed with it on a clean stop; Big Bertha's flusher as its own process exports
its gauges too (as a shadow run runs it).

Each test has its own exchange, queues, Redis prefix and keyspace (`legacy_env.isolated`)
and its own worker process (`legacy.worker.start_worker`, what `abacus legacy worker` runs).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest
from kombu import Connection
from prometheus_client.multiprocess import MultiProcessCollector

from counting import Event, customer_keys, parse_event
from counting.generate import GeneratorConfig, generate
from legacy import deadletter, metrics
from legacy.app import WorkerOptions
from legacy.producer import publish_lines
from legacy.topology import declare_topology
from legacy.worker import WorkerProcess, start_flusher, start_worker
from services import targets
from settings.model import Settings
from tests.integration.legacy_env import Env, isolated
from tests.metrics import Samples, scrape
from tests.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration

DEADLINE_S = 180.0


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    with isolated(settings, tmp_path, names="tlm") as e:
        yield e


Target = tuple[list[str], dict[str, str]]  # its addresses, its labels


def target_of(settings: Settings, pid: int) -> Target | None:
    """The target a process announced (its `pid` label), None while it has none."""
    for target in targets.listed(settings):
        if target.kind == "legacy" and target.pid == pid:
            return [target.address], target.labels
    return None


def announced(settings: Settings, process: WorkerProcess) -> Target:
    def probe() -> Target | None:
        assert process.alive(), f"it died:\n{process.log_tail()}"
        return target_of(settings, process.pid)

    found = wait_until(f"pid {process.pid} announces its metrics endpoint", probe, DEADLINE_S)
    assert found is not None
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def events(n: int, seed: int) -> list[str]:
    config = GeneratorConfig(n=n, seed=seed, companies=4, customers=40, facets=3)
    lines = [json.dumps(e, ensure_ascii=False) for e in generate(config)]
    assert all(isinstance(parse_event(line), Event) for line in lines)  # all valid
    return lines


def publish_pickles(env: Env, n: int) -> None:
    """`n` task messages in pickle: screened out by the worker's main process."""
    rabbit = env.settings.rabbitmq
    with Connection(rabbit.url()) as conn:
        channel = conn.channel()
        declare_topology(channel, rabbit)
        channel.confirm_select()
        for i in range(n):
            message = amqp.Message(
                b"\x80\x04K\x01.",
                content_type="application/x-python-serialize",
                application_headers={"id": f"pickle-{i}", "task": "legacy.aggregate"},
                delivery_mode=2,
            )
            channel.basic_publish(message, exchange=rabbit.exchange, routing_key=rabbit.routing_key)


def done_by_process(directory: Path) -> dict[str, float]:
    """Each process's own `done` count, from its file in the multiprocess directory."""
    out = {}
    for path in sorted(directory.glob("counter_*.db")):
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if sample.name == "abacus_legacy_tasks_total" and sample.labels == {
                    "outcome": "done"
                }:
                    out[path.name] = sample.value
    return out


def test_a_prefork_worker_sums_its_children_and_unregisters(env: Env) -> None:
    n, not_json, pickles = 160, 5, 3
    lines = events(n, seed=15)
    parsed = [parse_event(line) for line in lines]
    rows = sum(len(customer_keys(e)) for e in parsed if isinstance(e, Event))
    node = f"tlm-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    options = WorkerOptions(concurrency=2, pool="prefork", flush_interval_s=0.2, hostname=node)
    process = start_worker(env.settings, options, env.tmp / "worker.log")
    try:
        [address], labels = announced(env.settings, process)
        assert labels == {"pid": str(process.pid), "worker": node}
        [directory] = metrics.metrics_root(env.settings).glob(f"{process.pid}-*")

        publish_lines(env.settings.rabbitmq, lines + ["{not json"] * not_json)
        publish_pickles(env, pickles)

        def settled(found: Samples) -> bool:
            tasks = sum(
                value(found, "abacus_legacy_tasks_total", outcome=o) or 0
                for o in metrics.TASK_OUTCOMES
            )
            return (
                tasks >= n + not_json
                and (
                    value(found, "abacus_legacy_dead_lettered_total", reason="content_disallowed")
                    or 0
                )
                >= pickles
                and value(found, "abacus_legacy_bertha_pending_keys") == 0
                and (value(found, "abacus_legacy_bertha_flushes_total", outcome="ok") or 0) > 0
            )

        def probe() -> Samples:
            assert process.alive(), f"the worker died:\n{process.log_tail()}"
            return scrape(address)

        found = wait_for("every task counted and Big Bertha flushed", probe, settled, DEADLINE_S)
        per_process = done_by_process(directory)
    finally:
        code = process.stop()

    assert code == 0, process.log_tail()
    assert value(found, "abacus_legacy_tasks_total", outcome="done") == n
    for outcome in ("retried", "failed", "requeued"):
        assert value(found, "abacus_legacy_tasks_total", outcome=outcome) == 0, outcome
    assert value(found, "abacus_legacy_tasks_total", outcome="dead_lettered") == not_json
    dead = {
        labels[0][1]: v
        for (name, labels), v in found.items()
        if name == "abacus_legacy_dead_lettered_total"
    }
    assert set(dead) == set(metrics.DEAD_LETTER_REASONS)  # every reason, 0 until it happens
    assert {r: v for r, v in dead.items() if v} == {
        "not_json": not_json,
        "content_disallowed": pickles,
    }
    letters = deadletter.read(env.settings.rabbitmq, limit=100, ack=True)
    assert len(letters) == not_json + pickles  # the metric counts what was published
    assert value(found, "abacus_legacy_counter_rows_written_total", level="customer") == rows
    assert (value(found, "abacus_legacy_counter_rows_written_total", level="account") or 0) > 0
    assert value(found, "abacus_legacy_bertha_unfinished_batches") == 0
    age = value(found, "abacus_legacy_bertha_flush_age_seconds")
    assert age is not None and age < 30, f"the last successful flush was {age} s ago"
    assert value(found, "abacus_legacy_tasks_in_progress") == 0
    # the sum is over the pool's children: at least two processes counted tasks
    assert sum(per_process.values()) == n, per_process
    assert len([v for v in per_process.values() if v > 0]) >= 2, per_process
    # a clean stop removes its announcement and its directory
    assert target_of(env.settings, process.pid) is None
    assert not directory.exists()


def test_a_flusher_of_its_own_exports_big_bertha(env: Env) -> None:
    n = 40
    lines = events(n, seed=16)
    worker = start_worker(
        env.settings, WorkerOptions(concurrency=1, flush_interval_s=0), env.tmp / "worker.log"
    )
    flusher = start_flusher(env.settings, env.tmp / "flusher.log", interval_s=0.3)
    try:
        [worker_address], _ = announced(env.settings, worker)
        [flusher_address], labels = announced(env.settings, flusher)
        assert labels["flusher"].startswith("flusher-"), labels
        publish_lines(env.settings.rabbitmq, lines)
        wait_for(
            "the worker counted every task",
            lambda: scrape(worker_address),
            lambda f: value(f, "abacus_legacy_tasks_total", outcome="done") == n,
            DEADLINE_S,
        )
        found = wait_for(
            "the flusher wrote what the tasks left in Big Bertha",
            lambda: scrape(flusher_address),
            lambda f: (
                value(f, "abacus_legacy_bertha_pending_keys") == 0
                and (value(f, "abacus_legacy_bertha_batches_total", outcome="written") or 0) > 0
            ),
            DEADLINE_S,
        )
        without_flusher = scrape(worker_address)
    finally:
        flusher_code, worker_code = flusher.stop(), worker.stop()
    assert (flusher_code, worker_code) == (0, 0), flusher.log_tail() + worker.log_tail()
    assert (value(found, "abacus_legacy_counter_rows_written_total", level="account") or 0) > 0
    age = value(found, "abacus_legacy_bertha_flush_age_seconds")
    assert age is not None and age < 30, f"the last successful flush was {age} s ago"
    # the worker runs no flusher: it exports no Big Bertha series
    assert not [k for k in without_flusher if k[0].startswith("abacus_legacy_bertha_")]
    assert target_of(env.settings, worker.pid) is None
    assert target_of(env.settings, flusher.pid) is None


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_threads_and_solo_pools_count_in_the_main_process(env: Env, pool: str) -> None:
    n = 30
    options = WorkerOptions(concurrency=2, pool=pool, flush_interval_s=0.3)
    process = start_worker(env.settings, options, env.tmp / "worker.log")
    try:
        [address], _ = announced(env.settings, process)
        [directory] = metrics.metrics_root(env.settings).glob(f"{process.pid}-*")
        publish_lines(env.settings.rabbitmq, [*events(n, seed=17), "{not json"])
        found = wait_for(
            f"the {pool} worker counted every task and flushed",
            lambda: scrape(address),
            lambda f: (
                value(f, "abacus_legacy_tasks_total", outcome="dead_lettered") == 1
                and value(f, "abacus_legacy_tasks_total", outcome="done") == n
                and value(f, "abacus_legacy_bertha_pending_keys") == 0
            ),
            DEADLINE_S,
        )
        files = sorted(p.name for p in directory.glob("*.db"))
    finally:
        code = process.stop()
    assert code == 0, process.log_tail()
    assert value(found, "abacus_legacy_dead_lettered_total", reason="not_json") == 1
    assert {f.rsplit("_", 1)[1] for f in files} == {f"{process.pid}.db"}, files  # one process
    assert target_of(env.settings, process.pid) is None
    assert not directory.exists()
