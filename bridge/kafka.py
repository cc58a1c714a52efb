"""Kafka side of the bridge: topic creation and the producer configuration."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from settings.model import KafkaSettings

TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # 1 MiB events and 4 MiB DLQ'd bodies fit


class TopicConfigError(ValueError):
    """The topic settings contradict each other; the message says what to change."""


def topic_config(kafka: KafkaSettings) -> dict[str, str]:
    """The configuration every topic of the pipeline is created with.

    min.insync.replicas from settings: with the producer's acks=all, a write is confirmed
    only once that many replicas have it (1 on a one-node cluster; 2 of 3 is the usual
    production choice). More than the replication factor would refuse every write.
    """
    if kafka.min_insync_replicas > kafka.replication_factor:
        raise TopicConfigError(
            f"kafka.min_insync_replicas ({kafka.min_insync_replicas}) is above "
            f"kafka.replication_factor ({kafka.replication_factor}): every acks=all write "
            "would be refused; lower it or raise the replication factor"
        )
    return {
        "max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES),
        "min.insync.replicas": str(kafka.min_insync_replicas),
    }


def ensure_topics(kafka: KafkaSettings, topics: list[str], timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics (partitions, replication and min.insync.replicas from
    settings); the created ones. Existing topics are left as they are."""
    admin = AdminClient(kafka.client_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if not missing:
        return []
    new = [
        NewTopic(
            t,
            num_partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            config=topic_config(kafka),
        )
        for t in missing
    ]
    for topic, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "name", lambda: "")() != "TOPIC_ALREADY_EXISTS":
                raise RuntimeError(f"cannot create Kafka topic {topic}: {err}") from exc
    return missing


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all, batched; room for 4 MiB dead letters plus headers."""
    conf: dict[str, Any] = {
        **kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "batch.size": 1024 * 1024,
        "compression.type": "lz4",
        "message.max.bytes": TOPIC_MAX_MESSAGE_BYTES,
        "queue.buffering.max.kbytes": 256 * 1024,
        "message.timeout.ms": 60_000,  # undelivered that long: the bridge replaces the producer
        "retry.backoff.ms": 200,
        "statistics.interval.ms": 0,
        "client.id": "abacus-bridge",
    }
    conf.update(overrides)
    return conf


def make_producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    return Producer(producer_config(kafka, **overrides))


def topic_end_offsets(kafka: KafkaSettings, topic: str, timeout_s: float = 5.0) -> int | None:
    """Sum of the high watermarks of `topic` (records ever written), or None."""
    from confluent_kafka import Consumer, TopicPartition

    try:
        consumer = Consumer(
            {
                **kafka.client_config(),
                "group.id": "abacus-bridge-status",
                "enable.auto.commit": False,
            }
        )
    except KafkaException:
        return None
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return None
        total = 0
        for p in info.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            total += high
        return total
    except KafkaException:
        return None
    finally:
        consumer.close()
