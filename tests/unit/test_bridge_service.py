"""The bridge's ack bookkeeping, with a scripted producer and channel (no servers):
acks only after delivery, contiguous multiple acks, retries, refusals, stale tags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from bridge.amqp091 import Delivery
from bridge.service import Bridge, KafkaFatal
from settings.model import Settings
from wire.task import task_message


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []  # topic, value, callback
        self.headers: list[dict[str, bytes]] = []
        self.fail_next: list[KafkaError] = []
        self.refuse: Exception | None = None  # raised by the next produce call

    def produce(self, topic: str, value: bytes, key: Any, headers: Any, on_delivery: Any) -> None:
        if self.refuse is not None:
            exc, self.refuse = self.refuse, None
            raise exc
        self.sent.append((topic, value, on_delivery))
        self.headers.append(dict(headers))

    def confirm(self, i: int, err: KafkaError | None = None) -> None:
        self.sent[i][2](err, None)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class FakeConn:
    def __init__(self) -> None:
        self.acks: list[int] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        assert multiple
        self.acks.append(tag)

    def read_deliveries(self, timeout: float) -> list[Delivery]:
        return []

    def heartbeat_tick(self) -> None:
        pass

    def abort(self) -> None:
        pass


def delivery(tag: int, good: bool = True) -> Delivery:
    m = task_message(json.dumps({"company_id": "C", "event_id": f"E{tag}"}))
    props = {**m.properties, "headers": m.headers}
    if not good:
        props["content_type"] = "application/x-python-serialize"
    return Delivery(tag, False, "ex", "rk", "ctag", props, m.body)


@pytest.fixture
def bridge(tmp_path: Path) -> tuple[Bridge, FakeProducer, FakeConn]:
    b = Bridge(Settings(), "shadow", status_file=tmp_path / "s.json")
    producer, conn = FakeProducer(), FakeConn()
    b._producer, b._conn, b._gen = producer, conn, 1  # type: ignore[assignment]
    return b, producer, conn


def test_acks_wait_for_delivery_and_are_contiguous(bridge: Any) -> None:
    b, producer, conn = bridge
    for tag in (1, 2, 3, 4):
        b._handle(delivery(tag, good=tag != 3))
    assert [t for t, _, _ in producer.sent] == [b.topic, b.topic, b.dlq_topic, b.topic]
    b._ack_ready()
    assert conn.acks == []  # nothing confirmed, nothing acked
    producer.confirm(1)
    producer.confirm(3)
    b._ack_ready()
    assert conn.acks == []  # tag 1 not confirmed yet: 2 and 4 must wait
    producer.confirm(0)
    b._ack_ready()
    assert conn.acks == [2]
    producer.confirm(2)
    b._ack_ready()
    assert conn.acks == [2, 4]
    c = b.counts
    assert (c.consumed, c.produced, c.dead_lettered, c.acked) == (4, 3, 1, 4)
    assert c.dead_lettered_by_reason == {"pickle": 1}


def test_kafka_error_retries_with_backoff_and_never_acks_early(bridge: Any) -> None:
    b, producer, conn = bridge
    b._handle(delivery(1))
    producer.confirm(0, KafkaError(KafkaError._MSG_TIMED_OUT))
    b._ack_ready()
    assert conn.acks == [] and b.counts.kafka_errors == 1
    assert len(b._retries) == 1
    b._retries[0].retry_at = 0  # backoff elapsed
    b._retry_due()
    assert len(producer.sent) == 2  # produced again
    producer.confirm(1)
    b._ack_ready()
    assert conn.acks == [1] and b.counts.produced == 1


def test_a_record_kafka_refuses_for_good_is_dead_lettered(bridge: Any) -> None:
    b, producer, conn = bridge
    b._handle(delivery(1))
    producer.confirm(0, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert producer.sent[1][0] == b.dlq_topic
    assert producer.sent[1][1] == delivery(1).body  # the original body
    producer.confirm(1)
    b._ack_ready()
    assert conn.acks == [1]
    assert b.counts.dead_lettered_by_reason == {"kafka_rejected": 1}


def test_stale_delivery_tags_are_never_acked_on_a_new_channel(bridge: Any) -> None:
    b, producer, conn = bridge
    b._handle(delivery(1))
    b._handle(delivery(2))
    b._drop_connection()  # the channel is gone; its tags mean nothing now
    new_conn = FakeConn()
    b._conn, b._gen = new_conn, 2  # type: ignore[assignment]
    producer.confirm(0)  # late delivery reports of the old channel's records
    producer.confirm(1, KafkaError(KafkaError._MSG_TIMED_OUT))
    b._ack_ready()
    assert new_conn.acks == [] and conn.acks == []
    assert b._retries == []  # no retry: the broker redelivers the message
    b._handle(delivery(1))  # redelivered on the new channel, tag 1 again
    producer.confirm(2)
    b._ack_ready()
    assert new_conn.acks == [1]


def test_fatal_producer_error_asks_for_a_new_producer(bridge: Any) -> None:
    b, producer, _ = bridge
    b._handle(delivery(1))
    err = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    producer.confirm(0, err)
    assert b._fatal is err
    with pytest.raises(KafkaFatal):
        b._consume()  # the loop leaves, so that run() replaces the producer


def test_a_dead_letter_the_dlq_topic_refuses_is_truncated_not_stuck(bridge: Any) -> None:
    b, producer, conn = bridge
    big = delivery(1, good=False)
    big.body = b"x" * (1024 * 1024)
    b._handle(big)
    producer.confirm(0, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    topic, value, _ = producer.sent[1]
    assert topic == b.dlq_topic and value == big.body[: 256 * 1024]
    producer.confirm(1)
    b._ack_ready()
    assert conn.acks == [1]
