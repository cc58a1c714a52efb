"""The RabbitMQ topology of the aggregation task, the one definition every party declares.

The durable direct exchange, the durable legacy queue and its binding. Producers and legacy
workers declare it through kombu/py-amqp, the bridge through `bridge.amqp091`: both channel
kinds have these method signatures. What a party adds is its own (legacy's dead-letter
queue, the bridge's bounded mirror and overflow queues).
"""

from __future__ import annotations

from typing import Any

from settings.model import RabbitSettings

EXCHANGE_TYPE = "direct"


def declare_topology(channel: Any, rabbit: RabbitSettings) -> None:
    """Declare the durable direct exchange and the durable legacy queue bound to it.

    Idempotent; no queue arguments (the design is dead-letter free: the bridge writes
    undecodable messages to the Kafka DLQ topic, never back to RabbitMQ).
    """
    channel.exchange_declare(rabbit.exchange, EXCHANGE_TYPE, durable=True, auto_delete=False)
    channel.queue_declare(rabbit.legacy_queue, durable=True, exclusive=False, auto_delete=False)
    channel.queue_bind(rabbit.legacy_queue, rabbit.exchange, rabbit.routing_key)
