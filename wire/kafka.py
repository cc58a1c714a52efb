"""The pipelines' Kafka topics: the configuration every topic is created with, and their
creation (the bridge's events and dead-letter topics, the m1 live topic the seeds open)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException
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


def ensure_topics(
    kafka: KafkaSettings,
    topics: list[str],
    timeout_s: float = 30.0,
    logger: logging.Logger | None = None,
) -> list[str]:
    """Create the missing topics (partitions, replication and min.insync.replicas from
    settings); the created ones. Existing topics are left as they are. `logger`: where
    librdkafka's own lines go (default: straight to stderr)."""
    conf: dict[str, Any] = kafka.client_config()
    if logger is not None:
        conf["logger"] = logger
    admin = AdminClient(conf)
    try:
        return _create_missing(admin, kafka, topics, timeout_s)
    finally:
        if logger is not None:
            admin.poll(0)  # the client's queued lines, to the logger


def _create_missing(
    admin: AdminClient, kafka: KafkaSettings, topics: list[str], timeout_s: float
) -> list[str]:
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
