"""The bridge's test environment (helpers, not tests): an `Env` with its own exchange,
queues and topics on the shared servers (`isolated`), the messages a producer publishes,
and a reader of what reached a topic. Used by test_bridge, test_bridge_poison and
tests/faults/test_bridge_kafka_restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from bridge import rabbit
from bridge.amqp091 import Connection
from settings.model import Settings
from wire.task import task_message
from wire.topology import declare_topology

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    settings: Settings
    conn: Connection  # the test's own publisher/inspector connection

    @property
    def rmq(self) -> Any:
        return self.settings.rabbitmq

    def depth(self, queue: str) -> int:
        return self.conn.queue_declare(queue, passive=True)[1]

    def publish(self, messages: list[tuple[bytes, dict[str, Any]]]) -> None:
        """Publish with confirms: when this returns, every message is in its queues."""
        frames = [
            self.conn.publish_frames(body, self.rmq.exchange, self.rmq.routing_key, props)
            for body, props in messages
        ]
        for i in range(0, len(frames), 500):
            self.conn.send_raw(b"".join(frames[i : i + 500]))
        self.conn.wait_for_confirms(timeout=60)

    def env_vars(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "ABACUS_RABBITMQ__EXCHANGE": s.rabbitmq.exchange,
            "ABACUS_RABBITMQ__LEGACY_QUEUE": s.rabbitmq.legacy_queue,
            "ABACUS_RABBITMQ__SHADOW_QUEUE": s.rabbitmq.shadow_queue,
            "ABACUS_RABBITMQ__PORT": str(s.rabbitmq.port),
            "ABACUS_KAFKA__TOPIC": s.kafka.topic,
            "ABACUS_KAFKA__DLQ_TOPIC": s.kafka.dlq_topic,
            "ABACUS_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "ABACUS_SERVICES__DATA_DIR": str(s.services.data_dir),
        }


@contextlib.contextmanager
def isolated(settings: Settings, data_dir: Path, mirror: bool = True) -> Iterator[Env]:
    """An Env on its own exchange, queues (the mirror queue too unless `mirror` is false)
    and topics, with the bridge's status files in `data_dir`; all removed after. A test
    that restarted a server may leave the connection broken: the removal is best effort."""
    u = uuid.uuid4().hex[:8]
    isolated = settings.model_copy(
        update={
            "rabbitmq": settings.rabbitmq.model_copy(
                update={
                    "exchange": f"test.{u}.events",
                    "legacy_queue": f"test.{u}.legacy",
                    "shadow_queue": f"test.{u}.shadow",
                    "mirror_overflow_queue": f"test.{u}.overflow",
                    "prefetch": 256,
                }
            ),
            "kafka": settings.kafka.model_copy(
                update={"topic": f"test.{u}.events", "dlq_topic": f"test.{u}.dlq"}
            ),
            "services": settings.services.model_copy(update={"data_dir": data_dir}),
        }
    )
    conn = rabbit.connect(isolated.rabbitmq)
    declare_topology(conn, isolated.rabbitmq)
    if mirror:
        rabbit.declare_shadow_queue(conn, isolated.rabbitmq)
    conn.confirm_select()
    yield Env(isolated, conn)
    rmq = isolated.rabbitmq
    queues = (rmq.legacy_queue, rmq.shadow_queue, rmq.mirror_overflow_queue)
    with contextlib.suppress(Exception):
        for q in queues if mirror else queues[:1]:
            conn.queue_delete(q)
        conn.exchange_delete(rmq.exchange)
        conn.close()
    admin = AdminClient(isolated.kafka.client_config())
    for fut in admin.delete_topics([isolated.kafka.topic, isolated.kafka.dlq_topic]).values():
        with contextlib.suppress(Exception):  # a topic the test never created
            fut.result()


def celery_message(raw: str, task_id: str | None = None) -> tuple[bytes, dict[str, Any]]:
    m = task_message(raw, task_id=task_id)
    return m.body, {**m.properties, "headers": m.headers}


def event(i: int) -> str:
    return json.dumps(
        {
            "event_id": f"E{i}",
            "company_id": f"COM{i % 5}",
            "customer_id": f"CUS{i % 11}",
            "statistic_id": "opened",
            "timestamp": 1544153562 + i,
        }
    )


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    """All records of `topic`: read from the beginning of every partition up to its end
    offset, once at least `expected` records are there.

    No consumer group (partitions assigned, so no rebalance to wait for). A consumer that
    falls short is replaced once (CI saw one stall on a partition without reporting an
    error); a second shortfall fails the test with each partition's read offset against its
    end offset and the client's errors."""
    attempts: list[str] = []
    for _ in range(2):
        out, detail = _read_topic_once(settings, topic, expected, timeout_s / 2)
        if detail is None:
            return out
        attempts.append(detail)
    raise AssertionError(f"{topic}: fewer than {expected} records read: {attempts}")


def _read_topic_once(
    settings: Settings, topic: str, expected: int, timeout_s: float
) -> tuple[list[Any], str | None]:
    errors: list[str] = []
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "error_cb": lambda e: errors.append(str(e)),
        }
    )
    out: list[Any] = []
    read: dict[int, int] = {}  # partition -> next offset to read
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is None:
                    out.append(m)
                    read[m.partition()] = m.offset() + 1
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(str(m.error()))
            if len(out) >= expected:
                ends = {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in partitions
                }
                if all(read.get(p, 0) >= end for p, end in ends.items()):
                    return out, None
        ends = ends or {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()
    offsets = [(read.get(p, 0), end) for p, end in sorted(ends.items())]
    return out, f"{len(out)} read; offsets read/end {offsets}; errors {errors}"


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers() or [])
