"""The aggregation task's work for one event, as the old system did it.

validate (the contract) -> Check Uniques (Redis) -> Big Bertha increments (Redis) ->
customer counters (Cassandra, straight). No de-duplication by event_id: every delivery
counts. The two Redis round trips and the Cassandra write are separate steps with no
transaction around them, so a failure between them loses or doubles counts, on purpose.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from typing import Any

import redis

import storage
from counting import Rejection, account_keys, customer_keys, parse_event
from legacy import deadletter
from legacy.bertha import BigBertha
from legacy.chaos import Chaos
from legacy.keys import RedisKeys, encode_key
from legacy.trace import Trace
from legacy.uniques import CheckUniques
from settings import Settings

CRASH_EXIT_CODE = 70

DeadLetterSink = Callable[[dict[str, Any]], None]


class Outcome(enum.Enum):
    COUNTED = "counted"
    DEAD_LETTERED = "dead_lettered"
    REDELIVER = "redeliver"  # chaos: the caller requeues the message after counting it


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis(**settings.redis.client_kwargs(), socket_keepalive=True,
                       health_check_interval=30)


class LegacyClients:
    """What each legacy process opens: Redis (its keys, Big Bertha), a Cassandra session and
    the legacy counter store."""

    def __init__(self, settings: Settings) -> None:
        self._keys = RedisKeys.of(settings.redis)
        self._redis = redis_client(settings)
        self._bertha = BigBertha(self._redis, self._keys)
        self._session = storage.connect(settings.cassandra)
        self._store = storage.CounterStore(storage.Prepared(self._session), settings.cassandra,
                                           "legacy")

    def close(self) -> None:
        self._session.cluster.shutdown()
        self._redis.close()


class Aggregator(LegacyClients):
    """Per worker process: validates, checks uniques, adds to Big Bertha."""

    def __init__(self, settings: Settings, chaos: Chaos, dead_letter: DeadLetterSink,
                 trace: Trace) -> None:
        super().__init__(settings)
        self._settings, self._chaos, self._dead_letter = settings, chaos, dead_letter
        self._trace = trace
        self._uniques = CheckUniques(self._redis, self._keys, settings.redis.uniques_ttl_s)

    def aggregate(self, raw_event: str, task_id: str | None = None,
                  redelivered: bool = False) -> Outcome:
        parsed = parse_event(raw_event)
        if isinstance(parsed, Rejection):
            self.reject(parsed.reason.value, parsed.detail, raw_event, parsed.event_id, task_id)
            return Outcome.DEAD_LETTERED
        event = parsed
        encoded = [encode_key(k) for k in account_keys(event)]
        # Check Uniques: one round trip
        first = self._uniques.first_times(event.company_id, event.customer_id, encoded)
        # Big Bertha: the count and uniques increments, one round trip
        self._bertha.add(encoded, first)
        t_bertha = time.time()
        if not redelivered and self._chaos.crashes(event.event_id):
            os._exit(CRASH_EXIT_CODE)  # chaos: the worker process dies between Redis and Cassandra
        # customer level: straight to Cassandra counters
        self._store.write_customer((key, 1) for key in customer_keys(event))
        if task_id is not None:
            self._trace.task(task_id, t_bertha, time.time())
        if not redelivered and self._chaos.redelivers(event.event_id):
            self._redis.hincrby(self._keys.stats, "chaos_redelivered", 1)
            return Outcome.REDELIVER
        return Outcome.COUNTED

    def reject(self, reason: str, detail: str, raw_event: Any, event_id: str | None,
               task_id: str | None) -> None:
        """Dead-letter an event (or a malformed task) with its reason; counted in stats."""
        from legacy.protocol import task_message

        body = (task_message(raw_event, task_id).body if isinstance(raw_event, str)
                else repr(raw_event))
        self._dead_letter(deadletter.record(reason, detail, body=body, event_id=event_id,
                                            task_id=task_id, content_type="application/json"))
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(self._keys.stats, "dead_lettered", 1)
        pipe.hincrby(self._keys.stats, "dead:" + reason, 1)
        pipe.execute()
