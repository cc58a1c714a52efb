"""Legacy's side of the hand-over (`legacy.handover`) on the real servers, with real worker
processes: stopping under traffic leaves exactly the unprocessed events in the queue and
nothing in Big Bertha, a broker reconnect or a new worker does not consume while stopped,
resuming counts the rest; Check Uniques read and back-filled.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from counting import AccountKey, Event, Recount, account_keys, parse_event
from counting.generate import GeneratorConfig, generate
from legacy.aggregation import redis_client
from legacy.app import WorkerOptions, control_exchange, make_app
from legacy.bertha import BigBertha
from legacy.handover import (
    Entry,
    backfill_check_uniques,
    check_uniques,
    consuming_allowed,
    queue_consumers,
    queue_counts,
    rabbitmqctl,
    resume_consuming,
    stop_consuming,
)
from legacy.keys import RedisKeys
from legacy.producer import PublishReport, publish_lines
from legacy.status import read_status
from legacy.trace import Traces
from legacy.worker import WorkerProcess, start_worker
from settings.model import Settings
from tests.integration.legacy_env import Env, isolated

pytestmark = pytest.mark.integration

TIMEOUT_S = 180.0


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    with isolated(settings, tmp_path, names="tho") as e:
        yield e


def wait_for(condition: Callable[[], bool], observed: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {TIMEOUT_S:.0f} s; {observed()}"
        time.sleep(0.3)


def events(n: int, seed: int) -> list[str]:
    config = GeneratorConfig(n=n, seed=seed, companies=4, customers=40, facets=4)
    return [json.dumps(e, ensure_ascii=False) for e in generate(config)]


def event_of(line: str) -> Event:
    parsed = parse_event(line)
    assert isinstance(parsed, Event), parsed
    return parsed


def recount(lines: Iterable[str]) -> Recount:
    result = Recount()
    for line in lines:
        result.add_raw(line)
    return result


def account(truth: Recount) -> dict[AccountKey, tuple[int, int]]:
    return {c.key: (c.count, c.uniques) for c in truth.account()}


def customer(truth: Recount) -> dict[object, int]:
    return {c.key: c.count for c in truth.customer()}


def uniques_of(lines: Iterable[str]) -> dict[tuple[str, str], set[AccountKey]]:
    """What Check Uniques holds after these events: each customer's account keys."""
    out: dict[tuple[str, str], set[AccountKey]] = defaultdict(set)
    for line in lines:
        event = event_of(line)
        out[(event.company_id, event.customer_id)].update(account_keys(event))
    return dict(out)


def as_sets(entries: Iterable[Entry]) -> dict[tuple[str, str], set[AccountKey]]:
    out: dict[tuple[str, str], set[AccountKey]] = {}
    for company_id, customer_id, keys in entries:
        assert (company_id, customer_id) not in out, "one entry per customer"
        out[(company_id, customer_id)] = set(keys)
    return out


DONE = ("processed", "dead_lettered")  # legacy's stats of the tasks it finished


def bertha_left_in(settings: Settings) -> tuple[int, int]:
    """Big Bertha's pending fields and unfinished batches."""
    client = redis_client(settings)
    try:
        bertha = BigBertha(client, RedisKeys.of(settings.redis))
        return bertha.pending_fields(), len(list(bertha.batch_ids()))
    finally:
        client.close()


def bertha_left(env: Env) -> tuple[int, int]:
    return bertha_left_in(env.settings)


def done(env: Env) -> int:
    stats = env.stats()
    return sum(stats.get(k, 0) for k in DONE)


def worker(env: Env, name: str) -> WorkerProcess:
    options = WorkerOptions(
        concurrency=2,
        flush_interval_s=0.2,
        hostname=f"{name}@handover",
        trace_dir=env.tmp / "trace",
        loglevel="INFO",  # Celery's "Canceling queue" / "Started consuming" lines
    )
    return start_worker(env.settings, options, env.tmp / f"{name}.log")


def whole_log(process: WorkerProcess) -> str:
    return process.log_path.read_text(encoding="utf-8", errors="replace")


def workers_queues(env: Env) -> dict[str, list[str]]:
    """Each replying worker's active queues (remote control)."""
    app = make_app(env.settings)
    try:
        replies = app.control.inspect(timeout=2.0).active_queues() or {}
    finally:
        app.close()
    return {name: sorted(q["name"] for q in queues) for name, queues in replies.items()}


def connection_of(env: Env, hostname: str) -> tuple[str, int] | None:
    """(RabbitMQ's connection pid, the client's port) of a worker's consumer connection,
    found by the consumer of its remote-control (pidbox) queue; None while it has none."""
    pidbox = f"{hostname}.{control_exchange(env.settings)}.pidbox"
    ports = {c["peer_port"] for c in queue_consumers(env.settings, pidbox)}
    if len(ports) != 1:
        return None
    port = ports.pop()
    for line in rabbitmqctl(env.settings, "list_connections", "pid", "peer_port").splitlines():
        fields = line.split("\t")
        if len(fields) == 2 and fields[1].strip() == str(port):
            return fields[0], port
    return None


def test_stop_under_traffic_reconnect_new_worker_resume(env: Env) -> None:
    lines = events(2000, seed=21)
    truth_all = recount(lines)
    assert truth_all.events == len(lines) and not truth_all.rejected
    first = worker(env, "w1")
    second: WorkerProcess | None = None
    queue = env.settings.rabbitmq.legacy_queue
    returned = threading.Event()  # stop_consuming returned

    def traffic() -> Iterator[str]:
        """The lines; the last 300 only once stop_consuming returned, so the traffic spans
        the whole stop whatever its duration."""
        for i, line in enumerate(lines):
            if i == len(lines) - 300:
                returned.wait(TIMEOUT_S * 2)
            yield line

    published: list[PublishReport] = []
    publisher = threading.Thread(
        target=lambda: published.append(
            publish_lines(env.settings.rabbitmq, traffic(), rate=100, keep_ids=True)
        )
    )
    try:
        publisher.start()
        wait_for(lambda: done(env) >= 100, env.stats, "the worker counts")
        assert publisher.is_alive(), "the traffic ended before the hand-over began"
        try:
            report = stop_consuming(env.settings, timeout_s=TIMEOUT_S)
        finally:
            returned.set()
        stopped = done(env)
        publisher.join(timeout=TIMEOUT_S)
        assert not publisher.is_alive() and published, "the publisher did not finish"
        task_ids = published[0].task_ids
        assert len(task_ids) == len(lines)

        # what stop_consuming saw and left
        assert report["workers"] == ["w1@handover"], report
        assert report["before"]["consumers"] == 1 and report["before"]["holding"], report
        after = report["after"]
        assert after["consumers"] == 0 and after["unacked"] == 0, report
        assert after["reserved"] == 0 and after["active"] == 0 and not after["holding"], report
        assert report["processed"] == stopped, (report, env.stats())
        assert bertha_left(env) == (0, 0)
        assert not consuming_allowed(env.settings)
        assert queue_consumers(env.settings) == []
        # every event published is either counted or waits in the queue (none dead)
        counts = queue_counts(env.settings)
        assert env.stats().get("dead_lettered", 0) == 0
        assert (counts.ready, counts.unacked, counts.consumers) == (len(lines) - stopped, 0, 0)
        assert done(env) == stopped, "a task was processed after stop_consuming returned"

        # the counts are exactly those of the events processed (the workers' traces)
        processed_ids = set(Traces.read(env.tmp / "trace").tasks)
        assert len(processed_ids) == stopped
        processed = [
            line for line, tid in zip(lines, task_ids, strict=True) if tid in processed_ids
        ]
        truth_before = recount(processed)
        assert env.account() == account(truth_before)
        assert env.customer() == customer(truth_before)
        # Check Uniques holds exactly the keys of the processed events, per customer
        assert as_sets(check_uniques(env.settings)) == uniques_of(processed)

        # a broker reconnect of the running worker does not make it consume again
        old = connection_of(env, "w1@handover")
        assert old is not None, queue_consumers(env.settings)
        rabbitmqctl(env.settings, "close_connection", old[0], "abacus test: broker reconnect")
        wait_for(
            lambda: (new := connection_of(env, "w1@handover")) is not None and new[1] != old[1],
            lambda: (old, first.log_tail(20)),
            "the worker reconnected",
        )
        assert "Connection to broker lost" in whole_log(first)
        # it answers on its new connection, so its consumer restarted past basic.consume
        wait_for(
            lambda: "w1@handover" in workers_queues(env),
            lambda: first.log_tail(20),
            "the reconnected worker answers",
        )
        assert queue not in workers_queues(env)["w1@handover"]
        assert queue_counts(env.settings).consumers == 0
        assert "legacy consuming is off" in whole_log(first)  # on its reconnect

        # a worker started while stopped does not consume either
        second = worker(env, "w2")
        wait_for(
            lambda: "w2@handover" in workers_queues(env),
            lambda: second.log_tail(20) if second else None,
            "the new worker answers",
        )
        assert queue not in workers_queues(env)["w2@handover"]
        assert "legacy consuming is off" in whole_log(second)
        assert queue_counts(env.settings).consumers == 0
        assert done(env) == stopped
        assert queue_counts(env.settings).ready == len(lines) - stopped

        # stopping again finds everything stopped
        again = stop_consuming(env.settings, timeout_s=TIMEOUT_S)
        assert again["broadcasts"] == 0 and again["bertha"]["keys_flushed"] == 0, again
        assert again["workers"] == ["w1@handover", "w2@handover"], again

        # resuming: both workers consume, and count the rest
        resumed = resume_consuming(env.settings, timeout_s=TIMEOUT_S)
        assert resumed["workers"] == ["w1@handover", "w2@handover"], resumed
        assert sorted(resumed["after"]["holding"]) == resumed["workers"], resumed
        assert consuming_allowed(env.settings)
        wait_for(
            lambda: done(env) == len(lines) and bertha_left(env) == (0, 0),
            lambda: (env.stats(), bertha_left(env), queue_counts(env.settings)),
            "legacy counts the rest",
        )
        tags = [c["consumer_tag"] for c in queue_consumers(env.settings)]
        assert len(tags) == 2, tags
    finally:
        returned.set()
        publisher.join(timeout=TIMEOUT_S)
        for process in (first, second):
            if process is not None:
                process.stop()
    assert env.account() == account(truth_all)
    assert env.customer() == customer(truth_all)
    assert as_sets(check_uniques(env.settings)) == uniques_of(lines)


def test_backfilled_uniques_are_not_counted_again(env: Env) -> None:
    """Check Uniques back-filled with what Abacus counted (events A) makes legacy count B's
    uniques as if it had counted A itself; back-filling is idempotent."""
    lines = events(600, seed=22)
    a, b = lines[:300], lines[300:]
    counted_by_abacus = [(c, cu, sorted(keys)) for (c, cu), keys in uniques_of(a).items()]
    expected_members = sum(len(keys) for _, _, keys in counted_by_abacus)
    assert backfill_check_uniques(env.settings, counted_by_abacus) == expected_members
    assert backfill_check_uniques(env.settings, counted_by_abacus) == 0  # idempotent
    assert as_sets(check_uniques(env.settings)) == uniques_of(a)
    client = redis.Redis(**env.settings.redis.client_kwargs())
    try:
        keys = RedisKeys.of(env.settings.redis)
        ttls = {cast(int, client.ttl(keys.uniques(c, cu))) for c, cu, _ in counted_by_abacus}
    finally:
        client.close()
    assert all(0 < ttl <= env.settings.redis.uniques_ttl_s for ttl in ttls), ttls

    process = worker(env, "w")
    try:
        publish_lines(env.settings.rabbitmq, b)
        wait_for(
            lambda: done(env) == len(b) and bertha_left(env) == (0, 0),
            lambda: (env.stats(), bertha_left(env), process.log_tail(20)),
            "legacy counts B",
        )
    finally:
        process.stop()
    both, only_a, only_b = account(recount(lines)), account(recount(a)), account(recount(b))
    # B's counts; its uniques are those A did not already count
    assert env.account() == {
        key: (count, both[key][1] - only_a.get(key, (0, 0))[1])
        for key, (count, _) in only_b.items()
    }
    assert as_sets(check_uniques(env.settings)) == uniques_of(lines)


def test_a_worker_that_cannot_read_the_flag_consumes_only_once_it_can(env: Env) -> None:
    """Redis unreachable when the worker's consumer starts: it does not consume (the flag is
    unknown); once a Redis answers (here a throwaway server on the port the worker uses,
    flag clear) it consumes and counts."""
    from services.redis import RedisService

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = env.settings.model_copy(
        update={
            "services": env.settings.services.model_copy(update={"data_dir": env.tmp / "data"}),
            "redis": env.settings.redis.model_copy(update={"port": port, "password": None}),
        }
    )
    server = RedisService(settings)
    server.dir.mkdir(parents=True, exist_ok=True)
    server.configure()
    lines = events(200, seed=23)
    queue = settings.rabbitmq.legacy_queue
    options = WorkerOptions(concurrency=2, flush_interval_s=0.2, hostname="w@noredis")
    process = start_worker(settings, options, env.tmp / "w.log")
    redis_server: subprocess.Popen[bytes] | None = None
    try:
        wait_for(
            lambda: "w@noredis" in workers_queues(env),
            lambda: process.log_tail(20),
            "the worker answers",
        )
        assert queue not in workers_queues(env)["w@noredis"]
        assert "cannot read legacy's consuming flag" in whole_log(process)
        publish_lines(settings.rabbitmq, lines)
        counts = queue_counts(env.settings)
        assert (counts.ready, counts.consumers) == (len(lines), 0)

        with (server.dir / "redis.out").open("ab") as out:
            redis_server = subprocess.Popen(
                server.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

        def counted() -> int:
            try:
                return sum(read_status(settings, ask_workers=False).stats.get(k, 0) for k in DONE)
            except redis.RedisError:
                return -1

        wait_for(
            lambda: counted() == len(lines) and bertha_left_in(settings) == (0, 0),
            lambda: (counted(), queue_counts(env.settings), process.log_tail(20)),
            "the worker consumes once the flag can be read",
        )
        assert queue in workers_queues(env)["w@noredis"]
    finally:
        process.stop()
        if redis_server is not None:
            redis_server.kill()
            redis_server.wait(30)
    truth = recount(lines)
    assert env.account() == account(truth)
    assert env.customer() == customer(truth)
