"""Seed records on Kafka (issue 14's m1 hand-over): written into the live topic before the
live bridge starts, and read back at a rollback. The format and what absorbing a seed means
are `counting.seeds`; this module only does the Kafka I/O.

    write_seeds(settings, topic, entries)   # legacy's Check Uniques sets -> seed records
    counted_uniques(settings, topic)        # what the topic's events and seeds count unique

A seed record is keyed by its company (as the bridge keys events: the company's partition,
before the company's events that follow) and marked by the header `SEED_HEADER`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

from counting.seeds import SEED_HEADER, SEED_VERSION, CountedKeys, Entry, Headers, seed_records
from settings import Settings
from wire.kafka import TOPIC_MAX_MESSAGE_BYTES, ensure_topics

_FLUSH_TIMEOUT_S = 120.0


class SeedWriteError(RuntimeError):
    """Kafka did not confirm every seed record; the message says how many and why."""


def write_seeds(settings: Settings, topic: str, entries: Iterable[Entry]) -> int:
    """Write one seed record per (company, customer) of `entries` (more when its keys do not
    fit one record: `counting.seeds.seed_records`) into `topic`, created first when missing
    (kafka.partitions, replication, min.insync.replicas: `wire.kafka.ensure_topics`).
    Idempotent producer, acks=all; returns once Kafka confirmed every record, with their
    number (SeedWriteError otherwise). Writing the same entries twice is harmless: absorbing
    a seed again marks nothing new."""
    from confluent_kafka import Producer

    ensure_topics(settings.kafka, [topic])
    producer = Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": TOPIC_MAX_MESSAGE_BYTES,
            "client.id": "abacus-seeds",
        }
    )
    errors: list[Any] = []
    confirmed = 0

    def delivered(err: Any, _msg: Any) -> None:
        nonlocal confirmed
        if err is not None:
            errors.append(err)
        else:
            confirmed += 1

    headers: list[tuple[str, str | bytes | None]] = [(SEED_HEADER, SEED_VERSION)]
    written = 0
    for company, customer, keys in entries:
        for value in seed_records(company, customer, keys):
            while True:
                try:
                    producer.produce(
                        topic,
                        key=company.encode(),
                        value=value,
                        headers=headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.5)
            written += 1
            producer.poll(0)
    left = producer.flush(_FLUSH_TIMEOUT_S)
    if errors or left or confirmed != written:
        raise SeedWriteError(
            f"{confirmed} of {written} seed records confirmed by Kafka on {topic}"
            + (f", {left} unanswered after {_FLUSH_TIMEOUT_S:.0f}s" if left else "")
            + (f"; first error: {errors[0]}" if errors else "")
        )
    return written


def counted_uniques(settings: Settings, topic: str, timeout_s: float = 600.0) -> list[Entry]:
    """What Abacus counted as seen on `topic`, read from its start to its end offsets at the
    call: per (company, customer), the account keys of its valid events' first deliveries
    (de-duplicated by event_id, as the jobs) and the keys its seeds marked
    (`counting.seeds.CountedKeys`). Legacy's Check Uniques sets are back-filled with it at a
    rollback. An empty list when the topic does not exist."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": "abacus-seeds-reader",  # never commits: assign(), no subscribe()
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.message.max.bytes": TOPIC_MAX_MESSAGE_BYTES,
        }
    )
    counted = CountedKeys()
    try:
        info = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            return []
        ends: dict[int, int] = {}
        starts = []
        for p in sorted(info.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not ends:
            return []
        # records of one partition in order; partitions in any interleaving (de-duplication
        # by event_id across partitions then keeps whichever delivery came first here, and
        # the keys of a first delivery are the same whichever it is)
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: partitions {sorted(ends)} not read to their end in {timeout_s}s"
                )
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                p, offset = msg.partition(), msg.offset()
                end = ends.get(p) if p is not None else None
                if p is None or offset is None or end is None or offset >= end:
                    continue  # written after the call
                counted.add_record(msg.value(), cast(Headers, msg.headers()))
                if offset + 1 >= end:
                    del ends[p]
    finally:
        consumer.close()
    return counted.entries()
