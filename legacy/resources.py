"""What legacy owns on the servers, created and removed: `provision(settings)`,
`teardown(settings)`.

RabbitMQ: the aggregation exchange and the legacy queue (`wire.topology`, the production
topology producers publish to), legacy's dead-letter queue, and Celery's remote-control
(pidbox) exchange its workers declare. Redis: every key under legacy's prefix (Check
Uniques sets, Big Bertha's pending counts, stats, worker states). Its counters live in the
`legacy` count store, which `storage` provisions.
"""

from __future__ import annotations

import contextlib

from settings import Settings


def provision(settings: Settings) -> None:
    """Declare the exchange, the legacy queue and its binding, and the dead-letter queue
    (idempotent; what a worker or producer would declare on start)."""
    from kombu import Connection

    from legacy.topology import declare_topology

    with Connection(settings.rabbitmq.url()) as conn:
        declare_topology(conn.channel(), settings.rabbitmq)


def teardown(settings: Settings) -> None:
    """Delete legacy's queues, exchanges and Redis keys (best effort: what is already gone
    is fine). Whatever else was bound to the exchange loses its binding, not its queue."""
    import redis
    from kombu import Connection

    from legacy.app import control_exchange
    from legacy.keys import RedisKeys

    rabbit = settings.rabbitmq
    with Connection(rabbit.url()) as conn:
        for queue in (rabbit.legacy_queue, rabbit.dead_letter_queue):
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(queue)
        for exchange in (rabbit.exchange, control_exchange(settings) + ".pidbox"):
            with contextlib.suppress(Exception):
                conn.channel().exchange_delete(exchange)
    client = redis.Redis(**settings.redis.client_kwargs())
    try:
        for key in client.scan_iter(RedisKeys.of(settings.redis).pattern, count=1000):
            client.delete(key)
    finally:
        client.close()
