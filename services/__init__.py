"""Local Kafka, Cassandra, RabbitMQ and Redis servers run as plain processes (`abacus services`).

Python entry points: `services.manager.ensure_up/stop/status`, `services.install.install`,
`services.paths.flink_kafka_connector_jar`.
"""
