"""Consumer-group lag of a job on its topic (what Flink committed on its last checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class Lag:
    group_id: str
    topic: str
    end: int  # sum of the partitions' end offsets
    committed: int  # sum of the committed offsets (a partition never committed counts its start)

    @property
    def lag(self) -> int:
        return self.end - self.committed


def consumer_lag(kafka: KafkaSettings, group_id: str, topic: str, timeout_s: float = 10.0) -> Lag:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {**kafka.client_config(), "group.id": group_id, "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return Lag(group_id, topic, 0, 0)
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        committed = consumer.committed(partitions, timeout=timeout_s)
        end_total = committed_total = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
            end_total += high
            committed_total += tp.offset if tp.offset >= 0 else low
        return Lag(group_id, topic, end_total, committed_total)
    finally:
        consumer.close()
