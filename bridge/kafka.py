"""Kafka side of the bridge: topic creation and the producer configuration."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Producer

from settings.model import KafkaSettings

# the topics' configuration and creation are shared with the Abacus jobs' seed writer
from wire.kafka import TOPIC_MAX_MESSAGE_BYTES, TopicConfigError, ensure_topics, topic_config

__all__ = [
    "TOPIC_MAX_MESSAGE_BYTES",
    "TopicConfigError",
    "ensure_topics",
    "make_producer",
    "producer_config",
    "topic_config",
    "topic_end_offsets",
]


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
