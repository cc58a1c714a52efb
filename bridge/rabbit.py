"""RabbitMQ side of the bridge: its mirror and overflow queues, and connecting.

The aggregation exchange and the legacy queue are `wire.topology`'s `declare_topology`, the
single definition every party uses (RabbitMQ refuses a re-declaration with different
arguments); it accepts a py-amqp/kombu channel or a `bridge.amqp091.Connection` (same method
signatures). The bounded mirror queue and its overflow queue are the bridge's own.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Literal

from bridge.amqp091 import AmqpError, Connection
from settings.model import RabbitSettings
from wire.topology import declare_topology

Mode = Literal["shadow", "live"]


class MirrorQueueMismatch(Exception):
    """The mirror queue exists with other arguments (an unbounded one from an earlier
    version): RabbitMQ refuses to redeclare it (406 PRECONDITION_FAILED). The message says
    how to upgrade it."""


OVERFLOW_POLICY = "drop-head"
PRECONDITION_FAILED = 406


def mirror_arguments(rabbit: RabbitSettings) -> dict[str, Any]:
    """The mirror queue's bound: at most `mirror_max_length` ready messages and
    `mirror_max_bytes` of bodies; beyond, the oldest is dead-lettered to the overflow queue.

    drop-head, never reject-publish(-dlx): a queue that rejects makes RabbitMQ nack the
    publish to the publisher (with confirms) even though every other bound queue took the
    message, so a full mirror would make legacy's producers see failures. drop-head never
    involves the publisher and never touches the legacy queue.
    """
    return {
        "x-max-length": rabbit.mirror_max_length,
        "x-max-length-bytes": rabbit.mirror_max_bytes,
        "x-overflow": OVERFLOW_POLICY,
        "x-dead-letter-exchange": "",  # the default exchange: routed by queue name
        "x-dead-letter-routing-key": rabbit.mirror_overflow_queue,
    }


def overflow_arguments(rabbit: RabbitSettings) -> dict[str, Any]:
    """The overflow queue is bounded as the mirror (drop-head, no dead-lettering): if the
    bridge stays down until it is full too, its oldest are lost uncounted, which the
    drainer reports (`overflow_full`)."""
    return {
        "x-max-length": rabbit.mirror_max_length,
        "x-max-length-bytes": rabbit.mirror_max_bytes,
        "x-overflow": OVERFLOW_POLICY,
    }


def declare_shadow_queue(channel: Any, rabbit: RabbitSettings) -> None:
    """The bridge's own durable mirror queue, bound like the legacy queue, bounded, and its
    overflow queue (declared first: a message dead-lettered to a missing queue is lost).

    Raises MirrorQueueMismatch when either exists with other arguments (the channel is
    closed by the server then: reconnect before using the connection again).
    """
    declare_overflow_queue(channel, rabbit)
    _declare(channel, rabbit, rabbit.shadow_queue, mirror_arguments(rabbit))
    channel.queue_bind(rabbit.shadow_queue, rabbit.exchange, rabbit.routing_key)


def declare_overflow_queue(channel: Any, rabbit: RabbitSettings) -> None:
    """The durable, bounded queue the mirror dead-letters its overflow to (not bound to any
    exchange: only dead-lettering routes to it, through the default exchange)."""
    _declare(channel, rabbit, rabbit.mirror_overflow_queue, overflow_arguments(rabbit))


def _declare(channel: Any, rabbit: RabbitSettings, queue: str, arguments: dict[str, Any]) -> None:
    try:
        channel.queue_declare(
            queue, durable=True, exclusive=False, auto_delete=False, arguments=arguments
        )
    except Exception as exc:
        if _reply_code(exc) == PRECONDITION_FAILED:
            raise MirrorQueueMismatch(_mismatch_message(queue, rabbit)) from None
        raise


def _reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a channel error (amqp091, py-amqp and pika name it so)."""
    code = getattr(exc, "reply_code", None)
    return code if isinstance(code, int) else None


def _mismatch_message(queue: str, rabbit: RabbitSettings) -> str:
    return (
        f"RabbitMQ queue {queue!r} exists with other arguments than this bridge declares "
        f"(max length {rabbit.mirror_max_length:,}, {rabbit.mirror_max_bytes:,} bytes, "
        f"overflow {OVERFLOW_POLICY} to {rabbit.mirror_overflow_queue!r}); RabbitMQ cannot "
        "change a queue's arguments in place. Upgrade: run `abacus bridge mirror-upgrade "
        "--yes` with the bridge stopped (its backlog is counted as mirror overflow per "
        "event date, then the bounded queue replaces it)"
    )


class MirrorQueueInUse(Exception):
    """The mirror (or overflow) queue has a consumer: the shadow bridge still runs."""


def delete_shadow_queues(conn: Connection, rabbit: RabbitSettings) -> dict[str, int]:
    """Delete the mirror queue, then its overflow queue, each only if no consumer holds it
    (RabbitMQ checks: `if_unused`); {queue: messages dropped with it} (0 when it was already
    gone). Raises MirrorQueueInUse (the connection is closed by the server then)."""
    dropped = {}
    for queue in (rabbit.shadow_queue, rabbit.mirror_overflow_queue):
        try:
            dropped[queue] = conn.queue_delete(queue, if_unused=True)
        except AmqpError as exc:
            if _reply_code(exc) == PRECONDITION_FAILED:
                raise MirrorQueueInUse(
                    f"RabbitMQ queue {queue!r} has a consumer (the shadow bridge?): stop it "
                    "first (`abacus bridge stop shadow`), then remove the mirror"
                ) from None
            raise
    return dropped


def check_shadow_topology(rabbit: RabbitSettings) -> None:
    """Declare the exchange, the legacy queue and the bounded mirror before the bridge
    starts, so that a mirror left unbounded by an earlier version stops it at once with
    MirrorQueueMismatch (the bridge loop would only retry). An unreachable broker is left
    to the bridge's reconnect loop."""
    try:
        conn = connect(rabbit, heartbeat_s=0)
    except (AmqpError, OSError):
        return
    try:
        declare_topology(conn, rabbit)
        declare_shadow_queue(conn, rabbit)
    finally:
        conn.close()  # after a refused declaration the connection is already dropped


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


CONSUMER_TAG_PREFIX = "abacus-bridge-"


def consumer_tag(mode: Mode) -> str:
    """`abacus-bridge-<mode>-<hostname>-<pid>`: the bridge's consumer as the broker lists it
    (`rabbitmqctl list_consumers`, the management API), so the cutover can check that the
    live bridge is the legacy queue's only consumer and an operator can tell whose it is.
    At most 255 bytes (an AMQP short string): a long hostname is cut."""
    tail = f"-{os.getpid()}"
    head = f"{CONSUMER_TAG_PREFIX}{mode}-"
    host = socket.gethostname().encode("ascii", "replace")[: 255 - len(head) - len(tail)]
    return head + host.decode("ascii") + tail


def setup_consumer(conn: Connection, mode: Mode, rabbit: RabbitSettings, prefetch: int) -> str:
    """Declare what `mode` needs, set the prefetch and start consuming under
    `consumer_tag(mode)`; the consumer tag the broker confirmed."""
    declare_topology(conn, rabbit)
    if mode == "shadow":
        declare_shadow_queue(conn, rabbit)
    conn.basic_qos(0, prefetch, False)
    return conn.basic_consume(queue_for(mode, rabbit), consumer_tag(mode))


def queue_depth(rabbit: RabbitSettings, queue: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of `queue`, or None if it does not exist/unreachable."""
    try:
        with connect(rabbit, heartbeat_s=0, timeout_s=3.0) as conn:
            _, messages, consumers = conn.queue_declare(queue, passive=True)
            return messages, consumers
    except Exception:  # a status probe never fails the caller
        return None
