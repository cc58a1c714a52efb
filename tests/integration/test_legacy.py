"""The legacy pipeline on real servers: Celery workers on RabbitMQ, Check Uniques and Big
Bertha on Redis, counters in Cassandra, compared with the reference recount.

Each test has its own exchange, queues, Redis prefix and keyspace, and its own worker
process (`legacy.worker.start_worker`, the same code `abacus legacy worker` runs).
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import amqp
import pytest
import redis
from kombu import Connection

import storage
from counting import AccountCount, CustomerCount, Event, Recount, parse_event
from counting.corpus import invalid_lines, tricky_lines
from counting.generate import GeneratorConfig, generate
from legacy import deadletter
from legacy.aggregation import Aggregator
from legacy.app import WorkerOptions
from legacy.chaos import Chaos
from legacy.flusher import Flusher
from legacy.keys import RedisKeys
from legacy.producer import publish_lines
from legacy.protocol import task_message
from legacy.status import read_status
from legacy.topology import declare_topology
from legacy.trace import Trace
from legacy.worker import WorkerProcess, start_worker
from settings.model import Settings

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT_S = 180.0


@dataclass
class Env:
    settings: Settings
    session: object
    store: storage.CounterStore
    tmp: Path

    def account(self) -> dict[object, tuple[int, int]]:
        return {c.key: (c.count, c.uniques) for c in self.store.scan("account")
                if isinstance(c, AccountCount)}

    def customer(self) -> dict[object, int]:
        return {c.key: c.count for c in self.store.scan("customer")
                if isinstance(c, CustomerCount)}

    def stats(self) -> dict[str, int]:
        return read_status(self.settings, ask_workers=False).stats


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:8]
    isolated = settings.model_copy(update={
        "cassandra": settings.cassandra.model_copy(update={"keyspace_prefix": f"tl{tag}_"}),
        "redis": settings.redis.model_copy(update={"prefix": f"test:{tag}:"}),
        "rabbitmq": settings.rabbitmq.model_copy(update={
            "exchange": f"test.{tag}.events", "legacy_queue": f"test.{tag}.legacy",
            "shadow_queue": f"test.{tag}.shadow", "dead_letter_queue": f"test.{tag}.dead"}),
    })
    session = storage.connect(isolated.cassandra)
    keyspace = storage.keyspace_of(isolated.cassandra, "legacy")
    for cql in storage.statements(isolated.cassandra):
        if keyspace + " " in cql or keyspace + "." in cql:  # the legacy store only
            session.execute(cql, timeout=120)
    store = storage.CounterStore(storage.Prepared(session), isolated.cassandra, "legacy")
    yield Env(isolated, session, store, tmp_path)
    rabbit = isolated.rabbitmq
    with Connection(rabbit.url()) as conn:
        channel = conn.channel()
        for queue in (rabbit.legacy_queue, rabbit.dead_letter_queue):
            channel.queue_delete(queue)
        channel.exchange_delete(rabbit.exchange)
    client = redis.Redis(**isolated.redis.client_kwargs())
    for key in client.scan_iter(RedisKeys.of(isolated.redis).pattern, count=1000):
        client.delete(key)
    client.close()
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
    session.cluster.shutdown()


def worker(env: Env, **options: object) -> WorkerProcess:
    opts = WorkerOptions(**{"concurrency": 2, "flush_interval_s": 0.2, **options})  # type: ignore[arg-type]
    return start_worker(env.settings, opts, env.tmp / "worker.log")


def wait_done(env: Env, process: WorkerProcess, tasks: int) -> None:
    """Until `tasks` task executions are recorded and legacy has drained."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    streak = 0
    while streak < 2:
        assert process.alive(), f"the worker died:\n{process.log_tail()}"
        assert time.monotonic() < deadline, (
            f"legacy did not drain: {read_status(env.settings).to_dict()}\n{process.log_tail()}")
        status = read_status(env.settings)
        done = status.stats.get("processed", 0) + status.stats.get("dead_lettered", 0)
        streak = streak + 1 if status.drained and done >= tasks else 0
        time.sleep(0.3)


def corpus(n_generated: int, seed: int) -> list[str]:
    """The tricky corpus (DST, odd zones, every kind of facet, invalid events, redeliveries)
    and generated events with the generator's skew (big and small companies, heavy users)."""
    config = GeneratorConfig(n=n_generated, seed=seed, companies=6, customers=60, facets=8)
    return tricky_lines() + [json.dumps(e, ensure_ascii=False) for e in generate(config)]


def event_of(line: str) -> Event | None:
    parsed = parse_event(line)
    return parsed if isinstance(parsed, Event) else None


def first_deliveries(lines: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        event = event_of(line)
        if event is not None:
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
        out.append(line)
    return out


def recount(lines: Iterable[str], dedup: bool = True) -> Recount:
    result = Recount(dedup=dedup)
    for line in lines:
        result.add_raw(line)
    return result


def test_each_event_once_equals_the_recount(env: Env) -> None:
    lines = first_deliveries(corpus(300, seed=3))
    truth = recount(lines)
    process = worker(env)
    try:
        report = publish_lines(env.settings.rabbitmq, lines)
        assert report.published == len(lines)
        wait_done(env, process, len(lines))
    finally:
        process.stop()
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    letters = deadletter.read(env.settings.rabbitmq, limit=1000, ack=True)
    assert Counter(d["reason"] for d in letters) == truth.rejected
    assert env.stats()["processed"] == truth.events


def beyond_first(deliveries: Iterable[str]) -> list[str]:
    """The deliveries of a valid event_id after its first one (what de-duplication drops)."""
    seen: set[str] = set()
    out = []
    for line in deliveries:
        event = event_of(line)
        if event is not None:
            if event.event_id in seen:
                out.append(line)
            seen.add(event.event_id)
    return out


def test_redelivered_events_count_twice_and_only_they(env: Env) -> None:
    lines = corpus(200, seed=4)  # includes the corpus' own redeliveries of an event_id
    chaos = Chaos(redeliver=0.15)
    # each valid message hit by chaos is requeued once after it was counted
    redelivered = [line for line in lines
                   if (e := event_of(line)) is not None and chaos.redelivers(e.event_id)]
    assert len(redelivered) > 10
    deliveries = lines + redelivered
    process = worker(env, chaos=chaos)
    try:
        publish_lines(env.settings.rabbitmq, lines)
        wait_done(env, process, len(deliveries))
    finally:
        process.stop()

    truth = recount(lines)  # the reference counts: each event_id once
    extra = recount(beyond_first(deliveries), dedup=False)
    extra_account = {c.key: c.count for c in extra.account()}
    extra_customer = {c.key: c.count for c in extra.customer()}
    true_account = {c.key: (c.count, c.uniques) for c in truth.account()}
    true_customer = {c.key: c.count for c in truth.customer()}
    legacy_account, legacy_customer = env.account(), env.customer()

    # legacy counts every delivery (SEMANTICS.md §5) ...
    every = recount(deliveries, dedup=False)
    assert legacy_account == {c.key: (c.count, c.uniques) for c in every.account()}
    assert legacy_customer == {c.key: c.count for c in every.customer()}
    # ... so it over-counts by exactly the extra deliveries ...
    assert set(legacy_account) == set(true_account) | set(extra_account)
    for key, (count, _) in legacy_account.items():
        assert count == true_account.get(key, (0, 0))[0] + extra_account.get(key, 0), key
    for key, count in legacy_customer.items():
        assert count == true_customer.get(key, 0) + extra_customer.get(key, 0), key
    # ... and every other key stays exact
    untouched = set(true_account) - set(extra_account)
    assert len(untouched) > len(extra_account)
    assert all(legacy_account[k] == true_account[k] for k in untouched)
    assert all(legacy_customer[k] == true_customer[k]
               for k in set(true_customer) - set(extra_customer))
    assert env.stats()["chaos_redelivered"] == len(redelivered)


class _Trap:
    """Unpickling this creates a file: proof that a pickle body was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def _publish_raw(env: Env, messages: list[amqp.Message]) -> None:
    rabbit = env.settings.rabbitmq
    with Connection(rabbit.url()) as conn:
        channel = conn.channel()
        declare_topology(channel, rabbit)
        channel.confirm_select()
        for message in messages:
            channel.basic_publish(message, exchange=rabbit.exchange,
                                  routing_key=rabbit.routing_key)


def test_invalid_and_undecodable_messages_are_dead_lettered(env: Env) -> None:
    valid = tricky_lines()[0]
    good = task_message(valid)
    marker = env.tmp / "unpickled"

    def message(body: bytes, content_type: str = "application/json",
                headers: dict[str, object] | None = None) -> amqp.Message:
        return amqp.Message(body, content_type=content_type, content_encoding="utf-8",
                            application_headers=good.headers if headers is None else headers,
                            delivery_mode=2)

    def body(args: list[object]) -> bytes:
        return json.dumps([args, {}, {}]).encode()

    bad_messages = [
        (message(pickle.dumps(((_Trap(marker),), {}, {})), "application/x-python-serialize"),
         deadletter.CONTENT_DISALLOWED),
        (message(good.body[:-7]), deadletter.UNDECODABLE),
        (message(b"\xff\xfe not utf-8"), deadletter.UNDECODABLE),
        (message(good.body, headers={}), deadletter.UNKNOWN_TASK),
        (message(good.body, headers={**good.headers, "task": "other.task"}),
         deadletter.UNKNOWN_TASK),
        (message(body([valid, valid])), deadletter.BAD_TASK_MESSAGE),
        (message(body([json.loads(valid)])), deadletter.BAD_TASK_MESSAGE),
        (message(b'{"not": "a task body"}'), deadletter.BAD_TASK_MESSAGE),
    ]
    invalid = invalid_lines()
    process = worker(env)
    try:
        _publish_raw(env, [m for m, _ in bad_messages])
        publish_lines(env.settings.rabbitmq, [line for line, _ in invalid])
        publish_lines(env.settings.rabbitmq, [valid])  # after all that, still counted
        wait_done(env, process, len(bad_messages) + len(invalid) + 1)
        assert process.alive()
    finally:
        process.stop()

    letters = deadletter.read(env.settings.rabbitmq, limit=1000, ack=True)
    expected = Counter(reason for _, reason in bad_messages)
    expected.update(reason for _, reason in invalid)
    assert Counter(d["reason"] for d in letters) == expected
    assert not marker.exists(), "a pickle body was deserialized"
    for letter in letters:
        assert letter["detail"]
        assert letter["body"] is not None or letter["body_b64"]
    by_event = {d["event_id"]: d for d in letters if d["event_id"]}
    assert by_event["bad-16"]["reason"] == "bad_timezone"
    bad_zone = next(line for line, reason in invalid if reason == "bad_timezone")
    assert json.loads(by_event["bad-16"]["body"])[0] == [bad_zone]  # the task body, kept
    truth = recount([valid])
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}
    stats = env.stats()
    assert stats["processed"] == 1 and stats["dead_lettered"] == len(letters)


def test_a_crash_between_redis_and_cassandra_doubles_big_bertha(env: Env) -> None:
    config = GeneratorConfig(n=80, seed=5, companies=3, customers=30, facets=3)
    lines = [json.dumps(e) for e in generate(config)]
    chaos = Chaos(crash=0.08)
    crashed = [line for line in lines if chaos.crashes(event_of(line).event_id)]  # type: ignore[union-attr]
    assert crashed
    process = worker(env, chaos=chaos)
    try:
        publish_lines(env.settings.rabbitmq, lines)
        wait_done(env, process, len(lines) + len(crashed))
    finally:
        process.stop()
    truth = recount(lines)
    doubled = {c.key: c.count for c in recount(crashed, dedup=False).account()}
    # the crashed tasks ran their Redis steps twice: Big Bertha counted them twice, Check
    # Uniques recognised the customer the second time, the customer counters wrote once
    assert env.account() == {c.key: (c.count + doubled.get(c.key, 0), c.uniques)
                             for c in truth.account()}
    assert env.customer() == {c.key: c.count for c in truth.customer()}


def test_a_dropped_flush_loses_the_account_counts(env: Env) -> None:
    lines = [json.dumps(e) for e in generate(GeneratorConfig(n=20, seed=6, companies=2))]
    letters: list[dict[str, object]] = []
    aggregator = Aggregator(env.settings, Chaos(), letters.append, Trace(None, "test"))
    dropping = Flusher(env.settings, Chaos(drop_flush=1.0))
    flusher = Flusher(env.settings)
    try:
        for line in lines[:10]:
            aggregator.aggregate(line)
        assert dropping.pending_fields() > 0
        assert dropping.flush_once().dropped == 1
        assert dropping.pending_fields() == 0
        for line in lines[10:]:
            aggregator.aggregate(line)
        assert flusher.flush_once().keys > 0
    finally:
        aggregator.close()
        dropping.close()
        flusher.close()
    assert not letters
    # customer counters were written straight: all there; account counts of the first ten
    # events were in the dropped batch: lost
    assert env.customer() == {c.key: c.count for c in recount(lines).customer()}
    # the later events' increments arrived: their counts, and the uniques of customers
    # that Check Uniques had not seen in the lost batch
    before = {c.key: c.uniques for c in recount(lines[:10]).account()}
    later = {c.key: c.count for c in recount(lines[10:]).account()}
    assert env.account() == {c.key: (later[c.key], c.uniques - before.get(c.key, 0))
                             for c in recount(lines).account() if c.key in later}
