"""The aggregation task's work for one event, as the old system did it.

validate (the contract) -> Check Uniques + Big Bertha increments (Redis, one script) ->
customer counters (Cassandra, straight). No de-duplication by event_id: every delivery
counts. The Redis step and the Cassandra write are separate steps with no transaction
around them, so a crash between them doubles counts (the message is redelivered), on
purpose.

What is not a legacy flaw is losing an event silently. A step that fails on a transient
error (`legacy.retry`) is retried with backoff, and each step is safe to retry:
- the Redis step is one atomic script that also records this *delivery*'s token in the
  worker slot's own key; a retry whose first attempt was applied (a timeout after the
  script ran) finds its token and does nothing, so Big Bertha and Check Uniques never see
  a retry twice (a redelivery has a new token: it counts again, the documented flaw);
- the customer write is one request per partition (each an atomic single-partition
  counter batch, `legacy.writer`); a retry writes only the partitions not yet confirmed.
  A retry after a Cassandra *timeout* may double that partition (a counter write that
  timed out may have been applied): such retries are counted as `retried_ambiguous`.
When the budget is spent, or on an error that is not transient, the event is dead-lettered
with `redis_error`, `cassandra_error` or `task_error` (the letter says which step failed and
what was already counted) and counted in the stats: `failed`, `retried`, `dead:<reason>`.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis

import storage
from counting import CustomerKey, Rejection, account_keys, customer_keys, parse_event
from legacy import deadletter, metrics
from legacy.bertha import BigBertha
from legacy.chaos import Chaos
from legacy.keys import RedisKeys, encode_key
from legacy.retry import RetryPolicy, ambiguous
from legacy.trace import Trace
from legacy.writer import CounterWriter, partitions
from settings import Settings

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70

DeadLetterSink = Callable[[dict[str, Any]], None]


class Outcome(enum.Enum):
    COUNTED = "counted"
    DEAD_LETTERED = "dead_lettered"
    REDELIVER = "redeliver"  # chaos: the caller requeues the message after counting it


REDIS_TIMEOUT_S = 5.0  # every Redis command and connect: a partition fails, never hangs
REDIS_CONNECT_TIMEOUT_S = 3.0
STATS_RETRY = RetryPolicy(budget_s=30.0)  # stats are not worth holding a task longer


def redis_client(settings: Settings, timeout_s: float = REDIS_TIMEOUT_S) -> redis.Redis:
    """A Redis client whose every call has a timeout (socket and connect)."""
    return redis.Redis(
        **settings.redis.client_kwargs(),
        socket_keepalive=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, REDIS_CONNECT_TIMEOUT_S),
        health_check_interval=30,
    )


def count_stats(
    client: redis.Redis, keys: RedisKeys, fields: dict[str, int], policy: RetryPolicy = STATS_RETRY
) -> None:
    """Add to legacy's stats counters (retried on transient errors; logged if it cannot)."""

    def write() -> None:
        pipe = client.pipeline(transaction=False)
        for name, n in fields.items():
            pipe.hincrby(keys.stats, name, n)
        pipe.execute()

    try:
        policy.run(write, lambda _exc: None)
    except Exception:
        log.exception("could not count %s in legacy's Redis stats", fields)


class LegacyClients:
    """What each legacy process opens: Redis (its keys, Big Bertha), a Cassandra session and
    writers of the legacy counter store's two levels."""

    def __init__(self, settings: Settings, redis_timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self._keys = RedisKeys.of(settings.redis)
        self._redis = redis_client(settings, redis_timeout_s)
        self._bertha = BigBertha(self._redis, self._keys)
        self._session = storage.connect(settings.cassandra)
        self._customers = CounterWriter(self._session, settings.cassandra, "customer")
        self._accounts = CounterWriter(self._session, settings.cassandra, "account")

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    @property
    def keys(self) -> RedisKeys:
        return self._keys

    def close(self) -> None:
        self._session.cluster.shutdown()
        self._redis.close()


class Aggregator(LegacyClients):
    """Per worker process: validates, checks uniques, adds to Big Bertha, writes the
    customer counters; retries a failed step, dead-letters what it cannot count."""

    def __init__(
        self,
        settings: Settings,
        chaos: Chaos,
        dead_letter: DeadLetterSink,
        trace: Trace,
        retry: RetryPolicy | None = None,
        redis_timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        super().__init__(settings, redis_timeout_s)
        self._settings, self._chaos, self._dead_letter = settings, chaos, dead_letter
        self._trace = trace
        self._retry = retry or RetryPolicy()
        self._stats_retry = RetryPolicy(budget_s=min(self._retry.budget_s, STATS_RETRY.budget_s))
        self._ttl_s = settings.redis.uniques_ttl_s
        self._slots = threading.local()

    def _slot(self) -> str:
        """This worker slot's (process, thread) key of its last applied delivery."""
        slot = getattr(self._slots, "key", None)
        if slot is None:
            slot = self._slots.key = self._keys.slot(uuid.uuid4().hex)
        return str(slot)

    def aggregate(
        self, raw_event: str, task_id: str | None = None, redelivered: bool = False
    ) -> Outcome:
        parsed = parse_event(raw_event)
        if isinstance(parsed, Rejection):
            self.reject(parsed.reason.value, parsed.detail, raw_event, parsed.event_id, task_id)
            return Outcome.DEAD_LETTERED
        event = parsed
        encoded = [encode_key(k) for k in account_keys(event)]
        delivery = uuid.uuid4().hex  # a retry of this delivery is idempotent, a redelivery not
        retries: dict[str, int] = defaultdict(int)

        def on_retry(step: str) -> Callable[[BaseException], None]:
            def note(exc: BaseException) -> None:
                retries["retried"] += 1
                metrics.step_retried(step)
                if step == "cassandra" and ambiguous(exc):
                    retries["retried_ambiguous"] += 1
                log.warning(
                    "legacy task %s: %s step failed (%s: %s); retrying",
                    task_id,
                    step,
                    type(exc).__name__,
                    str(exc)[:200],
                )

            return note

        step = "redis"
        try:
            # Check Uniques and Big Bertha: one atomic script, one round trip
            uniques = self._keys.uniques(event.company_id, event.customer_id)
            slot = self._slot()
            self._retry.run(
                lambda: self._bertha.count_event(uniques, self._ttl_s, slot, delivery, encoded),
                on_retry(step),
            )
            t_bertha = time.time()
            if not redelivered and self._chaos.crashes(event.event_id):
                os._exit(CRASH_EXIT_CODE)  # chaos: the process dies between Redis and Cassandra
            # customer level: straight to Cassandra counters, one request per partition
            step = "cassandra"
            pending = dict(
                enumerate(
                    partitions([(key, (1,)) for key in customer_keys(event)], _customer_partition)
                )
            )
            rows = sum(len(part) for part in pending.values())
            self._retry.run(lambda: self._write_customer(pending), on_retry(step))
        except Exception as exc:
            self._give_up(step, exc, raw_event, event.event_id, task_id, dict(retries))
            return Outcome.DEAD_LETTERED
        metrics.rows_written("customer", rows)
        metrics.task("retried" if retries else "done")
        if retries:
            count_stats(self._redis, self._keys, {**retries, "recovered": 1}, self._stats_retry)
        if task_id is not None:
            self._trace.task(task_id, t_bertha, time.time())
        if not redelivered and self._chaos.redelivers(event.event_id):
            self._redis.hincrby(self._keys.stats, "chaos_redelivered", 1)
            return Outcome.REDELIVER
        return Outcome.COUNTED

    def _write_customer(self, pending: dict[int, list[tuple[Any, Sequence[int]]]]) -> None:
        """Write each partition's rows, all in flight at once; a confirmed partition leaves
        `pending` at once, so a retry writes only the rest."""
        outcome = self._customers.write(pending)
        for part in outcome.written:
            del pending[part]
        if outcome.error is not None:
            raise outcome.error

    def _give_up(
        self,
        step: str,
        exc: BaseException,
        raw_event: str,
        event_id: str,
        task_id: str | None,
        retries: dict[str, int],
    ) -> None:
        module = type(exc).__module__.split(".")[0]
        reason = {"redis": deadletter.REDIS_ERROR, "cassandra": deadletter.CASSANDRA_ERROR}.get(
            module, deadletter.TASK_ERROR
        )
        counted = "nothing" if step == "redis" else "account level (Big Bertha)"
        detail = (
            f"{step} step failed after {retries.get('retried', 0)} retries: "
            f"{type(exc).__name__}: {exc}"
        )
        log.error("legacy task %s: gave up (%s); dead-lettered as %s", task_id, detail, reason)
        self._dead_letter(
            deadletter.record(
                reason,
                detail,
                body=_task_body(raw_event, task_id),
                event_id=event_id,
                task_id=task_id,
                content_type="application/json",
                extra={"failed_step": step, "already_counted": counted},
            )
        )
        metrics.task("failed")
        stats = {**retries, "failed": 1, "dead_lettered": 1, "dead:" + reason: 1}
        if step != "redis":
            stats["failed_partial"] = 1
        count_stats(self._redis, self._keys, stats, self._stats_retry)

    def reject(
        self, reason: str, detail: str, raw_event: Any, event_id: str | None, task_id: str | None
    ) -> None:
        """Dead-letter an event (or a malformed task) with its reason; counted in stats."""
        body = _task_body(raw_event, task_id) if isinstance(raw_event, str) else repr(raw_event)
        self._dead_letter(
            deadletter.record(
                reason,
                detail,
                body=body,
                event_id=event_id,
                task_id=task_id,
                content_type="application/json",
            )
        )
        metrics.task("dead_lettered")
        count_stats(
            self._redis, self._keys, {"dead_lettered": 1, "dead:" + reason: 1}, self._stats_retry
        )


def _task_body(raw_event: str, task_id: str | None) -> bytes | str:
    """The task message body of an event (a dead letter can be published again as a task);
    text when the event holds a lone surrogate (the dead letter escapes it)."""
    from wire.task import task_message

    try:
        return task_message(raw_event, task_id).body
    except UnicodeEncodeError:
        return json.dumps([[raw_event], {}, {}], ensure_ascii=False)


def _customer_partition(key: CustomerKey) -> tuple[str, str, str]:
    return key.company_id, key.customer_id, storage.period_of(key.resolution, key.bucket)
