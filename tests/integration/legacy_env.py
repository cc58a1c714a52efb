"""The legacy pipeline's test environment (helpers, not tests): an `Env` with its own
exchange, queues, Redis prefix and legacy keyspace on the shared servers (`isolated`), and
the counts its store holds. Used by test_legacy and tests/faults/test_legacy_faults.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from kombu import Connection

import storage
from counting import AccountCount, CustomerCount
from legacy.keys import RedisKeys
from legacy.status import read_status
from settings.model import Settings


@dataclass
class Env:
    settings: Settings
    session: object
    store: storage.CounterStore
    tmp: Path

    def account(self) -> dict[object, tuple[int, int]]:
        return {
            c.key: (c.count, c.uniques)
            for c in self.store.scan("account")
            if isinstance(c, AccountCount)
        }

    def customer(self) -> dict[object, int]:
        return {c.key: c.count for c in self.store.scan("customer") if isinstance(c, CustomerCount)}

    def stats(self) -> dict[str, int]:
        return read_status(self.settings, ask_workers=False).stats


@contextlib.contextmanager
def isolated(
    settings: Settings, tmp: Path, names: str = "test", keyspace_tag: str = "tl"
) -> Iterator[Env]:
    """An Env whose exchange and queues are `<names>.<tag>.*`, Redis keys `<names>:<tag>:*`
    and keyspace prefix `<keyspace_tag><tag>_` (the legacy store only); all removed after."""
    tag = uuid.uuid4().hex[:8]
    isolated = settings.model_copy(
        update={
            "cassandra": settings.cassandra.model_copy(
                update={"keyspace_prefix": f"{keyspace_tag}{tag}_"}
            ),
            "redis": settings.redis.model_copy(update={"prefix": f"{names}:{tag}:"}),
            "rabbitmq": settings.rabbitmq.model_copy(
                update={
                    "exchange": f"{names}.{tag}.events",
                    "legacy_queue": f"{names}.{tag}.legacy",
                    "shadow_queue": f"{names}.{tag}.shadow",
                    "dead_letter_queue": f"{names}.{tag}.dead",
                }
            ),
        }
    )
    session = storage.connect(isolated.cassandra)
    keyspace = storage.keyspace_of(isolated.cassandra, "legacy")
    for cql in storage.statements(isolated.cassandra):
        if keyspace + " " in cql or keyspace + "." in cql:  # the legacy store only
            session.execute(cql, timeout=120)
    store = storage.CounterStore(storage.Prepared(session), isolated.cassandra, "legacy")
    yield Env(isolated, session, store, tmp)
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
