"""The RabbitMQ topology of the aggregation task, as legacy sees it.

The exchange, the legacy queue and its binding are declared by `wire.topology`'s
`declare_topology`, the single definition every party uses; the kombu entities below
describe the same thing for Celery (its worker re-declares its queue on start, with these
identical arguments: durable direct exchange, durable queue, no queue arguments). Legacy
adds its durable dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from legacy.deadletter import dead_letter_queue
from settings import RabbitSettings
from wire.topology import EXCHANGE_TYPE
from wire.topology import declare_topology as declare_aggregation_topology


def exchange(settings: RabbitSettings) -> Exchange:
    return Exchange(settings.exchange, type=EXCHANGE_TYPE, durable=True, auto_delete=False)


def legacy_queue(settings: RabbitSettings) -> Queue:
    return Queue(
        settings.legacy_queue,
        exchange(settings),
        routing_key=settings.routing_key,
        durable=True,
        auto_delete=False,
    )


def declare_topology(channel: Any, settings: RabbitSettings) -> None:
    """The aggregation exchange, the legacy queue and binding, and the dead-letter queue."""
    declare_aggregation_topology(channel, settings)
    dead_letter_queue(settings)(channel).declare()
