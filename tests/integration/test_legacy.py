"""The legacy pipeline on real servers: Celery workers on RabbitMQ, Check Uniques and Big
Bertha on Redis, counters in Cassandra, compared with the reference recount.

Each test has its own exchange, queues, Redis prefix and keyspace, and its own worker
process (`legacy.worker.start_worker`, the same code `abacus legacy worker` runs).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import amqp
import pytest
import redis
from cassandra.cluster import NoHostAvailable
from kombu import Connection

from counting import (
    Event,
    Recount,
    Rejection,
    account_keys,
    parse_event,
)
from counting.corpus import invalid_lines, poison_lines, tricky_lines
from counting.generate import GeneratorConfig, generate
from legacy import deadletter
from legacy.aggregation import Aggregator, Outcome
from legacy.app import WorkerOptions
from legacy.bertha import LeaseLost
from legacy.chaos import Chaos
from legacy.flusher import Flusher, Renewal
from legacy.keys import RedisKeys, encode_key
from legacy.producer import publish_lines
from legacy.retry import RetryPolicy
from legacy.status import queue_depth, read_status
from legacy.topology import declare_topology
from legacy.trace import Trace
from legacy.worker import WorkerProcess, start_worker
from legacy.writer import CounterWriter
from legacy.writer import Outcome as WriteOutcome
from settings.model import Settings
from tests.integration.legacy_env import Env, isolated
from wire.task import task_message

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT_S = 180.0


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    with isolated(settings, tmp_path) as e:
        yield e


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
            f"legacy did not drain: {read_status(env.settings).to_dict()}\n{process.log_tail()}"
        )
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
    # the index compare reads by date finds every key legacy wrote (hour and day buckets)
    for level, rows in (("account", list(truth.account())), ("customer", list(truth.customer()))):
        dates = {c.key.bucket[:10] for c in rows if c.key.resolution != "month"}
        for date in dates:
            want = {
                c.key: c.count
                for c in rows
                if c.key.resolution != "month" and c.key.bucket[:10] == date
            }
            got = {c.key: c.count for c in env.store.read_date(date, level)}
            assert got == want, (level, date)


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
    redelivered = [
        line for line in lines if (e := event_of(line)) is not None and chaos.redelivers(e.event_id)
    ]
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
    assert all(
        legacy_customer[k] == true_customer[k] for k in set(true_customer) - set(extra_customer)
    )
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
            channel.basic_publish(message, exchange=rabbit.exchange, routing_key=rabbit.routing_key)


def test_invalid_and_undecodable_messages_are_dead_lettered(env: Env) -> None:
    valid = tricky_lines()[0]
    good = task_message(valid)
    marker = env.tmp / "unpickled"

    def message(
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, object] | None = None,
    ) -> amqp.Message:
        return amqp.Message(
            body,
            content_type=content_type,
            content_encoding="utf-8",
            application_headers=good.headers if headers is None else headers,
            delivery_mode=2,
        )

    def body(args: list[object]) -> bytes:
        return json.dumps([args, {}, {}]).encode()

    bad_messages = [
        (
            message(pickle.dumps(((_Trap(marker),), {}, {})), "application/x-python-serialize"),
            deadletter.CONTENT_DISALLOWED,
        ),
        (message(good.body[:-7]), deadletter.UNDECODABLE),
        (message(b"\xff\xfe not utf-8"), deadletter.UNDECODABLE),
        (message(good.body, headers={}), deadletter.UNKNOWN_TASK),
        (
            message(good.body, headers={**good.headers, "task": "other.task"}),
            deadletter.UNKNOWN_TASK,
        ),
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
    assert env.account() == {
        c.key: (c.count + doubled.get(c.key, 0), c.uniques) for c in truth.account()
    }
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
    assert env.account() == {
        c.key: (later[c.key], c.uniques - before.get(c.key, 0))
        for c in recount(lines).account()
        if c.key in later
    }


# -- no input stops legacy, no fault loses an event silently ----------------------------


def wait_for(
    what: str,
    condition: Callable[[], object],
    observe: Callable[[], object],
    timeout_s: float = DRAIN_TIMEOUT_S,
    poll_s: float = 0.2,
) -> None:
    """Until `condition()` holds; on timeout, fail saying what was observed last."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}; observed: {observe()}")
        time.sleep(poll_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A throwaway redis-server of this test only (the shared one is never paused or
    restarted), configured by the project's own RedisService (AOF everysec)."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        from services.redis import RedisService

        self.port = _free_port()
        self.settings = settings.model_copy(
            update={
                "services": settings.services.model_copy(update={"data_dir": tmp / "redis-data"}),
                "redis": settings.redis.model_copy(update={"port": self.port, "password": None}),
            }
        )
        self.service = RedisService(self.settings)
        self.service.dir.mkdir(parents=True, exist_ok=True)
        self.service.configure()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.service.dir / "redis.out").open("ab")
        self.process = subprocess.Popen(
            self.service.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        client = self.client()
        wait_for(
            f"redis-server on port {self.port}",
            lambda: _pings(client),
            lambda: (self.service.dir / "redis.out").read_text()[-500:],
            timeout_s=30,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(**self.settings.redis.client_kwargs(), socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis(env: Env) -> Iterator[PrivateRedis]:
    server = PrivateRedis(env.settings, env.tmp)
    yield server
    server.kill()


def test_redis_keeps_big_berthas_increments_through_a_crash(private_redis: PrivateRedis) -> None:
    """The config `abacus services up` writes: AOF synced every second, so a SIGKILL of
    Redis loses at most the last second (here: nothing that was synced)."""
    private_redis.start()
    client = private_redis.client()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    client.hincrby("bb:pending", "c-key", 41)
    client.hincrby("bb:pending", "c-key", 1)
    wait_for(
        "the AOF to be synced",
        lambda: (
            client.info("persistence")["aof_last_write_status"] == "ok"
            and not client.info("persistence")["aof_pending_bio_fsync"]
            and _aof_holds(private_redis, b"c-key")
        ),
        lambda: client.info("persistence"),
        timeout_s=30,
    )
    private_redis.kill()
    private_redis.start()
    assert private_redis.client().hget("bb:pending", "c-key") == b"42"


def _aof_holds(server: PrivateRedis, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in server.service.dir.rglob("*.aof*"))


def test_the_poison_corpus_is_counted_exactly_or_dead_lettered(env: Env) -> None:
    """Every poison line as a Celery task: valid ones counted as the recount says, invalid
    ones in legacy's dead letters with the contract's reason, the worker still running."""
    poison = poison_lines()
    expected = {name: parse_event(raw) for name, raw in poison}
    valid = [raw for name, raw in poison if isinstance(expected[name], Event)]
    invalid = Counter(r.reason.value for r in expected.values() if isinstance(r, Rejection))
    assert valid and invalid
    huge = amqp.Message(
        b'[["' + b"x" * (7 * 1024 * 1024) + b'"], {}, {}]',
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=task_message("{}").headers,
        delivery_mode=2,
    )
    # a task argument that itself holds a lone surrogate (escaped at the envelope's level)
    surrogate_arg = amqp.Message(
        b'[["\\ud800{\\"event_id\\": \\"x\\"}"], {}, {}]',
        content_type="application/json",
        content_encoding="utf-8",
        application_headers=task_message("{}").headers,
        delivery_mode=2,
    )
    process = worker(env)
    try:
        report = publish_lines(env.settings.rabbitmq, [raw for _, raw in poison])
        _publish_raw(env, [huge, surrogate_arg])
        # the producer dead-letters bytes that are not UTF-8 (they cannot be a task argument)
        tasks = report.published + 2
        wait_done(env, process, tasks)
        assert process.alive(), process.log_tail()
    finally:
        process.stop()
    letters = deadletter.read(env.settings.rabbitmq, limit=1000, ack=True)
    got = Counter(d["reason"] for d in letters)
    assert got == invalid + Counter({"too_large": 1, "not_json": 1}), got
    arg = [d for d in letters if d["body"] and d["body"].startswith('[["\\ud800{')]
    assert len(arg) == 1 and arg[0]["escaped"] is True, arg
    truth = recount(valid)
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}
    # a lone surrogate in the event_id: the letter names it, escaped, and says so
    lone = [d for d in letters if d["event_id"] and "\\ud800" in d["event_id"]]
    assert lone and all(d["escaped"] is True for d in lone), letters
    for letter in letters:
        assert letter["detail"] and (letter["body"] is not None or letter.get("body_b64"))
    stats = env.stats()
    assert stats["processed"] == truth.events
    assert stats["dead_lettered"] == report.published + 2 - truth.events


def test_a_message_that_kills_the_worker_is_reported_at_once(env: Env) -> None:
    """py-amqp cannot decode an AMQP message_id of invalid UTF-8 and Celery's worker dies
    before any task code runs (the message stays first in the queue: a legacy flaw we
    keep). `legacy status` names the dead worker and why, from the worker itself."""
    process = worker(env)
    try:
        wait_for(
            "the worker to consume",
            lambda: read_status(env.settings, ask_workers=False).consumers > 0,
            lambda: (read_status(env.settings, ask_workers=False), process.log_tail()),
        )
        _publish_raw(
            env,
            [
                amqp.Message(
                    task_message("{}").body,
                    message_id=b"\xff\xfe",
                    content_type="application/json",
                    application_headers=task_message("{}").headers,
                )
            ],
        )
        wait_for("the worker to die", lambda: not process.alive(), process.log_tail, timeout_s=60)
    finally:
        process.stop()
    status = read_status(env.settings, ask_workers=False)
    assert len(status.failed_workers) == 1, status.workers
    reason = next(iter(status.failed_workers.values()))
    assert "Unrecoverable error" in reason and "UnicodeDecodeError" in reason, reason
    assert any("died" in p for p in status.problems) and status.ready == 1
    assert "UnicodeDecodeError" in (process.failure() or ""), process.log_tail()


def test_transient_redis_errors_are_retried_then_counted(
    env: Env, private_redis: PrivateRedis
) -> None:
    """Redis refuses connections (down under a consuming worker), then stalls every write
    (CLIENT PAUSE: each call times out): the tasks retry with backoff and every event is
    counted exactly once."""
    settings = env.settings.model_copy(
        update={
            "redis": private_redis.settings.redis.model_copy(
                update={"prefix": env.settings.redis.prefix}
            )
        }
    )
    env = Env(settings, env.session, env.store, env.tmp)
    config = GeneratorConfig(n=40, seed=8, companies=2, customers=10, facets=2)
    lines = [json.dumps(e) for e in generate(config)]
    first, second = lines[:20], lines[20:]
    private_redis.start()  # a worker that cannot read legacy's consuming flag does not consume
    process = worker(env, redis_timeout_s=0.5, retry_budget_s=120.0)
    try:
        wait_for(
            "the worker consuming",
            lambda: read_status(env.settings, ask_workers=False).consumers > 0,
            lambda: process.log_tail(),
        )
        private_redis.kill()
        publish_lines(env.settings.rabbitmq, first)  # Redis is not running
        wait_for(
            "a task to retry",
            lambda: "retrying" in process.log_tail(400),
            process.log_tail,
            timeout_s=60,
        )
        private_redis.start()
        wait_done(env, process, len(first))
        stats = env.stats()
        assert stats["retried"] > 0 and stats["recovered"] > 0, stats
        client = private_redis.client()
        client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        publish_lines(env.settings.rabbitmq, second)
        wait_done(env, process, len(lines))
        assert process.alive()
    finally:
        process.stop()
    after = env.stats()
    assert after["retried"] > stats["retried"], (stats, after)  # the pause timed calls out
    assert after["processed"] == len(lines) and not after.get("failed"), after
    truth = recount(lines)
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}
    assert not deadletter.read(env.settings.rabbitmq, limit=10)


def test_an_event_that_cannot_be_counted_is_dead_lettered_with_its_reason(
    env: Env, private_redis: PrivateRedis
) -> None:
    """Redis goes down under a consuming worker and stays down past the retry budget: each
    event is dead-lettered as redis_error (nothing counted, nothing acked into oblivion);
    once Redis is back, counting resumes. (Down when the worker starts, it would not consume
    at all: it cannot read legacy's consuming flag, test_legacy_handover.)"""
    settings = env.settings.model_copy(
        update={
            "redis": private_redis.settings.redis.model_copy(
                update={"prefix": env.settings.redis.prefix}
            )
        }
    )
    env = Env(settings, env.session, env.store, env.tmp)
    lines = [json.dumps(e) for e in generate(GeneratorConfig(n=4, seed=9, companies=1))]
    private_redis.start()
    process = worker(env, redis_timeout_s=0.5, retry_budget_s=1.0)
    try:
        wait_for(
            "the worker consuming",
            lambda: read_status(env.settings, ask_workers=False).consumers > 0,
            lambda: process.log_tail(),
        )
        private_redis.kill()
        publish_lines(env.settings.rabbitmq, lines[:3])
        wait_for(
            "three dead letters",
            lambda: _dead_count(env) >= 3,
            lambda: (_dead_count(env), process.log_tail()),
            timeout_s=120,
        )
        private_redis.start()
        publish_lines(env.settings.rabbitmq, lines[3:])
        wait_for(
            "the last event counted",
            lambda: env.stats().get("processed") == 1,
            lambda: (env.stats(), process.log_tail()),
        )
        wait_done(env, process, 1)
    finally:
        process.stop()
    letters = deadletter.read(env.settings.rabbitmq, limit=10, ack=True)
    assert [d["reason"] for d in letters] == ["redis_error"] * 3
    assert {d["event_id"] for d in letters} == {json.loads(x)["event_id"] for x in lines[:3]}
    assert all(d["failed_step"] == "redis" and d["already_counted"] == "nothing" for d in letters)
    assert json.loads(letters[0]["body"])[0][0] in lines[:3]  # the task, to publish again
    truth = recount(lines[3:])
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}


def _dead_count(env: Env) -> int:
    with Connection(env.settings.rabbitmq.url()) as conn:
        return queue_depth(conn, env.settings.rabbitmq.dead_letter_queue)[0]


class _FailingParts:
    """The real writer, except that the partitions whose rows match `fails` are not sent
    and fail as a Cassandra that lost its replicas would (a fault injected in front of real
    writes; the others are written as usual)."""

    def __init__(
        self, writer: CounterWriter, fails: Callable[[object], bool], times: int = 1_000_000
    ) -> None:
        self._writer, self._fails, self._times = writer, fails, times
        self.failed = 0

    def write(self, parts: dict[object, list[tuple[object, object]]]) -> WriteOutcome:
        failing = {p for p, rows in parts.items() if any(self._fails(k) for k, _ in rows)}
        failing = set(list(failing)[: max(0, self._times - self.failed)])
        outcome = self._writer.write({p: r for p, r in parts.items() if p not in failing})  # type: ignore[arg-type]
        if failing:
            self.failed += len(failing)
            outcome.error = outcome.error or NoHostAvailable("injected", {})
        return outcome


def test_a_partly_failed_flush_writes_only_the_rest_next_time(env: Env) -> None:
    lines = [json.dumps(e) for e in generate(GeneratorConfig(n=60, seed=10, companies=3, facets=3))]
    companies = sorted({json.loads(x)["company_id"] for x in lines})
    assert len(companies) == 3
    aggregator = Aggregator(env.settings, Chaos(), lambda _l: None, Trace(None, "test"))
    failing, flusher = Flusher(env.settings), Flusher(env.settings)
    try:
        for line in lines:
            assert aggregator.aggregate(line) is Outcome.COUNTED
        injected = _FailingParts(failing._accounts, lambda k: k.company_id == companies[0])  # type: ignore[attr-defined]
        failing._accounts = injected  # type: ignore[assignment]
        with pytest.raises(NoHostAvailable):
            failing.flush_once()
        assert injected.failed > 0
        # what was written left the batch; the rest waits, released for the next flush
        rest = {c.key for c in recount(lines).account() if c.key.company_id == companies[0]}
        assert flusher.pending_fields() == sum(
            1 + (c.uniques > 0) for c in recount(lines).account() if c.key in rest
        )
        written = env.account()
        assert written and all(k.company_id != companies[0] for k in written)
        result = flusher.flush_once()  # claims the released batch at once, no lease wait
        assert result.batches == 1 and result.keys == len(rest)
        assert flusher.pending_fields() == 0
    finally:
        aggregator.close()
        failing.close()
        flusher.close()
    truth = recount(lines)
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}


def test_only_one_flusher_works_a_batch_until_its_lease_expires(env: Env) -> None:
    lines = [json.dumps(e) for e in generate(GeneratorConfig(n=10, seed=11, companies=2))]
    aggregator = Aggregator(env.settings, Chaos(), lambda _l: None, Trace(None, "test"))
    slow, other = Flusher(env.settings, lease_s=1.0), Flusher(env.settings, lease_s=1.0)
    keys = RedisKeys.of(env.settings.redis)
    client = redis.Redis(**env.settings.redis.client_kwargs())
    try:
        for line in lines:
            aggregator.aggregate(line)
        batch = slow._bertha.take(slow.token, 1.0)
        assert batch is not None
        # the slow flusher works on, renewing its lease for well over its length
        with Renewal(slow._bertha, batch, slow.token, 1.0) as renewal:
            wait_for(
                "five renewals (over a lease and a half)",
                lambda: renewal.renewals >= 5,
                lambda: renewal.renewals,
                timeout_s=30,
            )
            assert other.flush_once().batches == 0  # its lease holds: not claimed
            assert client.exists(keys.batch(batch))
        # the slow flusher stops renewing (as if it died): the lease expires, then it's claimed
        wait_for(
            "the lease to expire",
            lambda: not client.exists(keys.lease(batch)),
            lambda: client.pttl(keys.lease(batch)),
            timeout_s=30,
        )
        result = other.flush_once()
        assert result.batches == 1
        with pytest.raises(LeaseLost):  # the old holder can no longer finish it
            slow.work(batch)
    finally:
        client.close()
        aggregator.close()
        slow.close()
        other.close()
    truth = recount(lines)
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}


class CuttableProxy:
    """A TCP proxy in front of the shared Cassandra that this test can cut (every
    connection closed, new ones refused: a partition or a node down, as the driver sees it)
    and restore, without touching the server other tests use."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, _free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        assert self._server is not None
        with contextlib.suppress(OSError):  # wakes the accepting thread; the port is free
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def test_a_cassandra_outage_is_retried_then_counted_exactly(env: Env) -> None:
    """Cassandra unreachable (connections cut and refused) while events arrive: their Redis
    step is done once, their customer write retried with backoff until Cassandra is back;
    Big Bertha's flushes fail and are written later; every count exact, none lost."""
    proxy = CuttableProxy((env.settings.cassandra.hosts[0], env.settings.cassandra.port))
    settings = env.settings.model_copy(
        update={"cassandra": env.settings.cassandra.model_copy(update={"port": proxy.port})}
    )
    env = Env(settings, env.session, env.store, env.tmp)
    lines = [json.dumps(e) for e in generate(GeneratorConfig(n=30, seed=12, companies=2, facets=2))]
    before, during = lines[:10], lines[10:]
    process = worker(env, retry_budget_s=180.0)
    try:
        publish_lines(env.settings.rabbitmq, before)
        wait_done(env, process, len(before))  # nothing in flight to Cassandra now
        proxy.cut()
        publish_lines(env.settings.rabbitmq, during)
        wait_for(
            "a customer write to be retried",
            lambda: "cassandra step failed" in process.log_tail(400),
            process.log_tail,
            timeout_s=120,
        )
        proxy.restore()
        wait_done(env, process, len(lines))
    finally:
        process.stop()
        proxy.cut()
    stats = env.stats()
    assert stats["processed"] == len(lines) and not stats.get("failed"), stats
    assert stats["retried"] > 0 and stats["recovered"] > 0, stats
    truth = recount(lines)
    assert env.customer() == {c.key: c.count for c in truth.customer()}
    assert env.account() == {c.key: (c.count, c.uniques) for c in truth.account()}
    assert not deadletter.read(env.settings.rabbitmq, limit=10)


def test_each_step_of_a_retried_task_is_applied_once(env: Env) -> None:
    """The Redis step of a delivery applies once however often it is retried (a retry after
    a lost reply finds its token), a redelivery applies again (the documented flaw); a
    customer write that failed for one partition is retried for that partition only."""
    lines = [json.dumps(e) for e in generate(GeneratorConfig(n=2, seed=13, companies=1))]
    event = event_of(lines[0])
    assert event is not None
    keys = RedisKeys.of(env.settings.redis)
    aggregator = Aggregator(
        env.settings,
        Chaos(),
        lambda _l: None,
        Trace(None, "test"),
        RetryPolicy(budget_s=30.0, first_backoff_s=0.01),
    )
    flusher = Flusher(env.settings)
    try:
        bertha = aggregator._bertha
        encoded = [encode_key(k) for k in account_keys(event)]
        uniques = keys.uniques(event.company_id, event.customer_id)
        slot = keys.slot("test-slot")
        assert bertha.count_event(uniques, 60, slot, "delivery-1", encoded) == len(encoded)
        assert bertha.count_event(uniques, 60, slot, "delivery-1", encoded) == -1  # a retry
        assert bertha.count_event(uniques, 60, slot, "delivery-2", encoded) == 0  # redelivery
        flusher.flush_once()
        twice = {c.key: (2 * c.count, c.uniques) for c in recount(lines[:1]).account()}
        assert env.account() == twice
        # the customer write: the month partition fails once, the rest is written once
        flaky = _FailingParts(aggregator._customers, lambda k: k.resolution == "month", times=1)  # type: ignore[attr-defined]
        aggregator._customers = flaky  # type: ignore[assignment]
        assert aggregator.aggregate(lines[1]) is Outcome.COUNTED
        assert flaky.failed == 1  # the month partition, once; hour+day written once
    finally:
        aggregator.close()
        flusher.close()
    assert env.customer() == {c.key: c.count for c in recount(lines[1:]).customer()}
    assert env.stats()["retried"] == 1 and env.stats()["recovered"] == 1


def test_hostile_headers_are_dead_lettered_not_dropped(env: Env) -> None:
    """Headers a real Celery worker would drop silently (an ETA it cannot read, an expiry
    in the past) or fail on outside the task (a time limit that is not two numbers): each
    message dead-lettered as bad_task_message, the worker still counting after them."""
    from tests.poison_amqp import HOSTILE_HEADERS

    valid = tricky_lines()[0]
    good = task_message(valid)
    messages = [
        amqp.Message(
            good.body,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            application_headers={**good.headers, name: value},
        )
        for name, value in HOSTILE_HEADERS
    ]
    process = worker(env)
    try:
        _publish_raw(env, messages)
        publish_lines(env.settings.rabbitmq, [valid])
        wait_done(env, process, len(messages) + 1)
        assert process.alive(), process.log_tail()
    finally:
        process.stop()
    letters = deadletter.read(env.settings.rabbitmq, limit=100, ack=True)
    assert [d["reason"] for d in letters] == ["bad_task_message"] * len(messages), letters
    truth = recount([valid])
    assert env.customer() == {c.key: c.count for c in truth.customer()}
