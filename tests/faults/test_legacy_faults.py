"""Legacy through a Redis restart and a RabbitMQ restart, with traffic flowing.

(a) A legacy worker and a Big Bertha flusher count a steady stream while Redis is stopped
    and started again (`services.manager`, as `abacus bench faults` does): at the end
    legacy equals the recount, each event published once, nothing stuck.
(b) `publish_lines` publishes at a steady rate while RabbitMQ is stopped and started again:
    it returns, every line reached the legacy queue at least once, and every extra copy is
    accounted for by `republished`.

Servers are restarted: see conftest.py (a private server set outside CI).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from counting import AccountCount
from counting.generate import GeneratorConfig, generate
from counting.recount import Recount
from legacy import deadletter
from legacy.aggregation import Aggregator, Outcome
from legacy.app import WorkerOptions
from legacy.chaos import Chaos
from legacy.flusher import Flusher
from legacy.producer import PublishReport, publish_lines
from legacy.status import read_status
from legacy.trace import Trace
from legacy.worker import WorkerProcess, start_flusher, start_worker
from services import manager
from settings.model import Settings
from tests.integration.legacy_env import Env, isolated

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

SERVERS = ["rabbitmq", "redis", "cassandra"]
EVENTS, RATE = 400, 20.0
DEADLINE_S = 300.0


def wait_for(
    what: str,
    condition: Callable[[], object],
    observe: Callable[[], object],
    timeout_s: float = DEADLINE_S,
    poll_s: float = 0.3,
) -> None:
    """Until `condition()` holds; on timeout, fail saying what was observed last."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except Exception as exc:  # a server still restarting: observe again
            last = f"{type(exc).__name__}: {exc}"
        else:
            last = ""
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}; observed: {observe()} {last}")
        time.sleep(poll_s)


@pytest.fixture
def env(fault_settings: Settings, tmp_path: Path) -> Iterator[Env]:
    manager.ensure_up(fault_settings, SERVERS)
    with isolated(fault_settings, tmp_path, names="testf", keyspace_tag="tf") as e:
        yield e
        manager.ensure_up(fault_settings, SERVERS)  # a failed test may have left one down


def lines(n: int, seed: int) -> list[str]:
    config = GeneratorConfig(n=n, seed=seed, companies=5, customers=50, facets=6)
    return [json.dumps(e, ensure_ascii=False) for e in generate(config)]


class Publisher(threading.Thread):
    """`publish_lines` at a steady rate in a thread; `published` counts lines sent."""

    def __init__(self, env: Env, batch: list[str]) -> None:
        super().__init__(daemon=True)
        self._env, self._lines = env, batch
        self.published = 0
        self.report: PublishReport | None = None
        self.error: BaseException | None = None

    def _progress(self, n: int) -> None:
        self.published += n

    def run(self) -> None:
        try:
            self.report = publish_lines(
                self._env.settings.rabbitmq,
                self._lines,
                rate=RATE,
                on_progress=self._progress,
                keep_ids=True,
            )
        except BaseException as exc:  # reported by the test
            self.error = exc


def restart(settings: Settings, name: str) -> None:
    manager.stop(settings, [name])
    manager.ensure_up(settings, [name])


def _status(env: Env) -> str:
    try:
        return json.dumps(read_status(env.settings, ask_workers=True).to_dict(), default=str)
    except Exception as exc:
        return f"(status unreadable: {type(exc).__name__}: {exc})"


def recount_of(batch: list[str]) -> Recount:
    truth = Recount(dedup=True)
    for line in batch:
        truth.add_raw(line)
    return truth


def count_through_a_restart(
    fault_settings: Settings, env: Env, batch: list[str], server: str
) -> PublishReport:
    """A worker and a Big Bertha flusher count `batch`, published at RATE, while `server` is
    restarted once a third of it is published; returns the publisher's report once legacy
    drained (and stayed drained), the worker and the flusher alive throughout."""
    worker = start_worker(
        env.settings, WorkerOptions(concurrency=2, flush_interval_s=0), env.tmp / "worker.log"
    )
    flusher = start_flusher(env.settings, env.tmp / "flusher.log", interval_s=0.5)
    procs: list[WorkerProcess] = [worker, flusher]

    def logs() -> str:
        return "\n".join(f"--- {p.log_path.name}:\n{p.log_tail(30)}" for p in procs)

    try:
        publisher = Publisher(env, batch)
        publisher.start()
        wait_for(
            "a third of the events published",
            lambda: publisher.published >= EVENTS // 3,
            lambda: publisher.published,
            timeout_s=120,
        )
        restart(fault_settings, server)
        publisher.join(DEADLINE_S)
        assert publisher.error is None, f"publishing failed: {publisher.error!r}"
        report = publisher.report
        assert report is not None and report.published == EVENTS

        def drained() -> bool:
            assert worker.alive() and flusher.alive(), logs()
            status = read_status(env.settings, ask_workers=True)
            done = status.stats.get("processed", 0) + status.stats.get("dead_lettered", 0)
            return status.drained and done >= EVENTS

        wait_for(
            f"legacy to drain after the {server} restart",
            drained,
            lambda: f"{_status(env)}\n{logs()}",
        )
        wait_for("legacy to stay drained", drained, lambda: f"{_status(env)}\n{logs()}")
    finally:
        for p in procs:
            p.stop()
    return report


def test_legacy_counts_every_event_through_a_redis_restart(
    fault_settings: Settings, env: Env
) -> None:
    batch = lines(EVENTS, seed=11)
    truth = recount_of(batch)
    count_through_a_restart(fault_settings, env, batch, "redis")
    stats = env.stats()
    assert stats.get("dead_lettered", 0) == 0, (
        stats,
        deadletter.read(env.settings.rabbitmq, limit=20, ack=False),
    )
    assert stats["processed"] == EVENTS, stats
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}


def test_publish_lines_goes_on_through_a_rabbitmq_restart(
    fault_settings: Settings, env: Env
) -> None:
    batch = lines(EVENTS, seed=12)
    publisher = Publisher(env, batch)
    publisher.start()
    wait_for(
        "a third of the events published",
        lambda: publisher.published >= EVENTS // 3,
        lambda: publisher.published,
        timeout_s=120,
    )
    restart(fault_settings, "rabbitmq")
    publisher.join(DEADLINE_S)
    assert not publisher.is_alive(), f"publish_lines did not return ({publisher.published})"
    assert publisher.error is None, f"publishing failed: {publisher.error!r}"
    report = publisher.report
    assert report is not None
    assert report.published == EVENTS and len(set(report.task_ids)) == EVENTS, report.summary()
    assert report.reconnects >= 1, report.summary()
    # the legacy queue holds every line at least once; each extra copy was republished
    seen: Counter[str] = Counter()
    with Connection(env.settings.rabbitmq.url()) as conn:
        channel = conn.channel()
        while True:
            message = channel.basic_get(env.settings.rabbitmq.legacy_queue, no_ack=True)
            if message is None:
                break
            seen[message.headers["id"]] += 1
    missing = set(report.task_ids) - set(seen)
    assert not missing, f"{len(missing)} lines never reached the queue; {report.summary()}"
    extra = sum(seen.values()) - EVENTS
    assert 0 <= extra <= report.republished, (extra, report.summary())
    print(f"\n{report.summary()}; extra copies in the queue: {extra}")


def test_the_worker_reconnects_after_a_rabbitmq_restart(fault_settings: Settings, env: Env) -> None:
    """Celery's consumer reconnects by itself; tasks delivered and not acked when the
    broker went are redelivered and count again (legacy's documented flaw): nothing is
    under the recount, and legacy drains."""
    batch = lines(EVENTS, seed=13)
    truth = recount_of(batch)
    report = count_through_a_restart(fault_settings, env, batch, "rabbitmq")
    stats = env.stats()
    assert stats.get("dead_lettered", 0) == 0, stats
    customer = env.customer()
    want = {c.key: c.count for c in truth.customer()}
    under = {k: (customer.get(k, 0), n) for k, n in want.items() if customer.get(k, 0) < n}
    assert not under, f"{len(under)} keys under the recount, e.g. {list(under.items())[:5]}"
    over_events = stats["processed"] - EVENTS
    print(f"\n{report.summary()}; executions beyond one per event: {over_events}")


def test_legacy_status_says_when_redis_would_lose_its_state(env: Env) -> None:
    """The bench's Redis restart lost everything because that server had been started with a
    config from before the append-only file: status names that risk."""
    status = read_status(env.settings, ask_workers=False)
    assert status.redis_aof is True, status.to_dict()
    assert not any("append-only" in p for p in status.problems), status.problems
    without = dataclasses.replace(status, redis_aof=False)
    assert any("append-only file" in p for p in without.problems), without.problems
    assert without.to_dict()["redis_aof"] is False


def test_a_flush_whose_confirm_meets_redis_down_writes_nothing_twice(env: Env) -> None:
    """The shadow run's Redis restart left legacy's account level +240 over the truth: a
    window written to Cassandra whose confirm (its delete from the batch) failed on the
    restarted Redis stayed in the batch and the next flush wrote it again. The confirm is
    retried while the lease holds: each increment is written once."""
    batch = lines(60, seed=14)
    truth = Recount(dedup=True)
    for line in batch:
        truth.add_raw(line)
    letters: list[dict[str, object]] = []
    aggregator = Aggregator(env.settings, Chaos(), letters.append, Trace(None, "worker"))
    flusher = Flusher(env.settings)
    failures = {"left": 1}
    confirm = flusher._bertha.confirm

    def flaky(*args: object, **kwargs: object) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise redis.ConnectionError("Connection closed by server (the test)")
        confirm(*args, **kwargs)  # type: ignore[arg-type]

    try:
        for line in batch:
            assert aggregator.aggregate(line) is Outcome.COUNTED
        flusher._bertha.confirm = flaky  # type: ignore[method-assign]
        for _ in range(3):  # a failed flush would leave its rest to the next one
            try:
                flusher.flush_once()
            except Exception as exc:
                print(f"flush failed: {type(exc).__name__}: {exc}")
        assert failures["left"] == 0, "the confirm was never called"
        assert flusher.pending_fields() == 0
    finally:
        aggregator.close()
        flusher.close()
    assert not letters, letters
    account = {
        c.key: (c.count, c.uniques)
        for c in env.store.scan("account")
        if isinstance(c, AccountCount)
    }
    assert account == {c.key: (c.count, c.uniques) for c in truth.account()}
