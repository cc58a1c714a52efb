"""`--truth kafka`: the raw events of the topic that can fall on a date, bounded.

The bound, fixed when an audit starts and stored with it (so a resumed audit reads the same
records): per partition, from the first record whose Kafka timestamp is at or after the
earliest instant any time zone's local date (or month, with `include_month`) can begin,
UTC+14, minus a clock-skew margin, to the end offset at the start of the audit. An event is
appended to the log after it happened (late events arrive later, never earlier), so every
event of the date is within the bound, and so is the first delivery of each of its
duplicates; records produced after the audit started are not read.
"""

from __future__ import annotations

from collections.abc import Iterator

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from counting import earliest_instant_s
from settings import KafkaSettings

Bounds = dict[int, tuple[int, int]]  # partition -> [first offset, end offset)


def earliest_instant_ms(date: str, include_month: bool, skew_s: int) -> int:
    """The earliest instant an event of `date` (or of its month) can have, less the skew."""
    return (earliest_instant_s(date, include_month) - skew_s) * 1000


def _consumer(settings: KafkaSettings, group: str) -> Consumer:
    return Consumer(
        {
            **settings.client_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )


def bounds(
    settings: KafkaSettings,
    date: str,
    include_month: bool,
    skew_s: int,
    group: str,
    timeout_s: float = 30.0,
) -> Bounds:
    """The offsets to read for a date, per partition of settings.topic."""
    consumer = _consumer(settings, group)
    try:
        metadata = consumer.list_topics(settings.topic, timeout=timeout_s)
        topic = metadata.topics.get(settings.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise LookupError(f"Kafka topic {settings.topic!r} not found")
        since = earliest_instant_ms(date, include_month, skew_s)
        query = [TopicPartition(settings.topic, p, since) for p in sorted(topic.partitions)]
        found = consumer.offsets_for_times(query, timeout=timeout_s)
        out: Bounds = {}
        for tp in found:
            _, end = consumer.get_watermark_offsets(
                TopicPartition(settings.topic, tp.partition), timeout=timeout_s
            )
            first = end if tp.offset in (OFFSET_END, -1) or tp.offset < 0 else tp.offset
            out[tp.partition] = (first, end)
        return out
    finally:
        consumer.close()


def raw_events(
    settings: KafkaSettings,
    offsets: Bounds,
    group: str,
    poll_s: float = 1.0,
    idle_limit_s: float = 60.0,
) -> Iterator[bytes]:
    """The record values within the bounds, partition by partition interleaved."""
    todo = {p: (first, end) for p, (first, end) in offsets.items() if first < end}
    if not todo:
        return
    consumer = _consumer(settings, group)
    try:
        consumer.assign(
            [TopicPartition(settings.topic, p, first) for p, (first, _) in todo.items()]
        )
        idle = 0.0
        while todo:
            batch = consumer.consume(num_messages=2000, timeout=poll_s)
            idle = idle + poll_s if not batch else 0.0
            if idle >= idle_limit_s:
                raise TimeoutError(
                    f"no records from {settings.topic!r} for {idle_limit_s:.0f}s "
                    f"with partitions {sorted(todo)} unfinished"
                )
            for msg in batch:
                p, offset = msg.partition(), msg.offset()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p is not None:
                            todo.pop(p, None)
                        continue
                    raise KafkaException(err)
                # a consumed record always has both; a message without them is not a record
                if p is None or offset is None or p not in todo:
                    continue
                if offset < todo[p][1]:
                    value = msg.value()
                    if value is not None:
                        yield value
                if offset >= todo[p][1] - 1:
                    todo.pop(p)
    finally:
        consumer.close()
