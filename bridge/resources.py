"""What the bridge owns on the servers, created and removed: `provision(settings)`,
`teardown(settings)`.

Kafka: the events topic it produces to and the dead-letter topic (the Abacus jobs read the
first and dead-letter to the second). RabbitMQ: its bounded mirror queue and the mirror's
overflow queue; the exchange and the legacy queue are legacy's (`wire.topology`), declared
here only so the mirror can be bound.
"""

from __future__ import annotations

import contextlib

from bridge.amqp091 import AmqpError
from settings import Settings


def provision(settings: Settings) -> None:
    """Create the topics that are missing, and declare the mirror and overflow queues bound
    to the aggregation exchange (so nothing published before the bridge connects is
    missed). MirrorQueueMismatch when a queue exists with other arguments."""
    from bridge import rabbit
    from bridge.kafka import ensure_topics
    from wire.topology import declare_topology

    ensure_topics(settings.kafka, topics(settings))
    with rabbit.connect(settings.rabbitmq, heartbeat_s=0) as conn:
        declare_topology(conn, settings.rabbitmq)
        rabbit.declare_shadow_queue(conn, settings.rabbitmq)


def teardown(settings: Settings) -> None:
    """Delete the mirror and overflow queues and both topics (best effort: what is already
    gone is fine)."""
    from bridge import rabbit

    for queue in (settings.rabbitmq.shadow_queue, settings.rabbitmq.mirror_overflow_queue):
        with (
            contextlib.suppress(AmqpError, OSError),
            rabbit.connect(settings.rabbitmq, heartbeat_s=0) as conn,
        ):
            conn.queue_delete(queue)
    delete_topics(settings)


def topics(settings: Settings) -> list[str]:
    """The Kafka topics the bridge owns: events, then dead letters."""
    return [settings.kafka.topic, settings.kafka.dlq_topic]


def delete_topics(settings: Settings) -> None:
    """Delete the events and dead-letter topics (best effort), e.g. after a benchmark that
    produced to Kafka without the bridge."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka.client_config())
    for future in admin.delete_topics(topics(settings)).values():
        with contextlib.suppress(Exception):
            future.result()
