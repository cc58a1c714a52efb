"""The wire format the pipelines share: what producers, legacy and the bridge agree on.

- `wire.task`: the aggregation task's Celery protocol-2 message (JSON only), its size bound
  and the one check of its envelope (pure, no I/O);
- `wire.topology`: the RabbitMQ exchange, the legacy queue and their binding, declared the
  same way by every party (RabbitMQ refuses a re-declaration with other arguments);
- `wire.kafka`: the configuration every Kafka topic is created with, and their creation
  (the bridge's topics; the live topic that `abacus.seeds` opens at the m1 hand-over).

It sits below the pipelines, so none of them imports another to speak to the others.
"""
