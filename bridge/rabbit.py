"""RabbitMQ side of the bridge: the topology every party declares, and connecting.

`declare_topology` is the single definition of the aggregation exchange and the legacy
queue; the legacy producer and workers may import it so that every declaration carries the
same arguments (RabbitMQ refuses a re-declaration with different ones). It accepts a
py-amqp/kombu channel or a `bridge.amqp091.Connection` (same method signatures).
"""

from __future__ import annotations

from typing import Any, Literal

from bridge.amqp091 import Connection
from settings.model import RabbitSettings

Mode = Literal["shadow", "live"]
EXCHANGE_TYPE = "direct"


def declare_topology(channel: Any, rabbit: RabbitSettings) -> None:
    """Declare the durable direct exchange and the durable legacy queue bound to it.

    Idempotent; no queue arguments (the design is dead-letter free: the bridge writes
    undecodable messages to the Kafka DLQ topic, never back to RabbitMQ).
    """
    channel.exchange_declare(rabbit.exchange, EXCHANGE_TYPE, durable=True, auto_delete=False)
    channel.queue_declare(rabbit.legacy_queue, durable=True, exclusive=False, auto_delete=False)
    channel.queue_bind(rabbit.legacy_queue, rabbit.exchange, rabbit.routing_key)


def declare_shadow_queue(channel: Any, rabbit: RabbitSettings) -> None:
    """The bridge's own durable mirror queue, bound like the legacy queue."""
    channel.queue_declare(rabbit.shadow_queue, durable=True, exclusive=False, auto_delete=False)
    channel.queue_bind(rabbit.shadow_queue, rabbit.exchange, rabbit.routing_key)


def queue_for(mode: Mode, rabbit: RabbitSettings) -> str:
    """The queue the bridge consumes in `mode`."""
    return rabbit.shadow_queue if mode == "shadow" else rabbit.legacy_queue


def connect(rabbit: RabbitSettings, heartbeat_s: int = 30, timeout_s: float = 10.0) -> Connection:
    """An open connection (with its channel) to the configured broker."""
    return Connection(
        rabbit.host,
        rabbit.port,
        rabbit.username,
        rabbit.password.get_secret_value(),
        rabbit.vhost,
        ssl=rabbit.ssl,
        heartbeat_s=heartbeat_s,
        connect_timeout_s=timeout_s,
    ).connect()


def setup_consumer(conn: Connection, mode: Mode, rabbit: RabbitSettings, prefetch: int) -> str:
    """Declare what `mode` needs, set the prefetch and start consuming; the consumer tag."""
    declare_topology(conn, rabbit)
    if mode == "shadow":
        declare_shadow_queue(conn, rabbit)
    conn.basic_qos(0, prefetch, False)
    return conn.basic_consume(queue_for(mode, rabbit))


def queue_depth(rabbit: RabbitSettings, queue: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of `queue`, or None if it does not exist/unreachable."""
    try:
        with connect(rabbit, heartbeat_s=0, timeout_s=3.0) as conn:
            _, messages, consumers = conn.queue_declare(queue, passive=True)
            return messages, consumers
    except Exception:  # a status probe never fails the caller
        return None
