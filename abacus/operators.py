"""The Python operators of both jobs: thin adapters around the counting contract.

They run inside Flink (thread mode: the JVM's embedded interpreter) and hold no state:
de-duplication, fan-out and uniqueness are Flink SQL in the JVM (`abacus/pipeline.py`), the
counter sink and the drain counter are Java (`abacus/jvm`).
Every counting rule is a call into `counting`; these classes only convert rows and do I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import MapFunction, OutputTag, ProcessFunction, RuntimeContext

from counting import (
    Rejection,
    account_facets,
    bucket_labels,
    parse_event,
)
from settings import KafkaSettings

# -- validation ----------------------------------------------------------------------------


class Validate(ProcessFunction):  # type: ignore[misc]
    """Raw Kafka value -> one event row, or (raw bytes, reason, detail, event_id) to a side
    output: every check is `counting.parse_event` on the bytes exactly as received.

    The event row carries what the jobs count by, as the contract computes it: the event's
    local (hour, day, month) labels (`counting.bucket_labels`) and the (facet, value) pairs
    it counts under (`counting.account_facets`, the total first) as two parallel arrays (an
    array of rows arrives in the JVM as copies of one reused row). Its account keys are every
    label with every pair, which the Java operator `abacus.sink.Uniques` forms. The customer
    job counts no facet: its rows (`facets=False`) end at the labels.
    """

    def __init__(self, rejected: OutputTag, facets: bool = True) -> None:
        self._rejected = rejected
        self._facets = facets  # the customer job counts no facet: its rows end at the labels

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        parsed = parse_event(value)
        if isinstance(parsed, Rejection):
            yield self._rejected, Row(value, parsed.reason.value, parsed.detail,
                                      parsed.event_id or "")
            return
        hour, day, month = bucket_labels(parsed.timestamp, parsed.timezone)
        if not self._facets:
            yield Row(parsed.event_id, parsed.company_id, parsed.customer_id,
                      parsed.statistic_id, hour, day, month)
            return
        facets, values = zip(*account_facets(parsed), strict=True)
        yield Row(parsed.event_id, parsed.company_id, parsed.customer_id, parsed.statistic_id,
                  hour, day, month, list(facets), list(values))


class DeadLetter(MapFunction):  # type: ignore[misc]
    """Publishes each rejected event to the DLQ topic: original bytes, reason in headers.

    Synchronous (flush per record): invalid events are rare, and a record is acknowledged
    by Kafka before the checkpoint that covers its offset can complete, so none is lost.
    """

    def __init__(self, kafka: KafkaSettings, source: str) -> None:
        self._kafka, self._source = kafka, source
        self._producer: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({**self._kafka.client_config(), "acks": "all",
                                   "message.max.bytes": 2 * 1024 * 1024 + 4096})

    def map(self, value: Row) -> int:
        raw, reason, detail, event_id = value
        headers = [("reason", reason.encode()), ("detail", detail.encode()),
                   ("event_id", event_id.encode()), ("source", self._source.encode())]
        errors: list[Any] = []
        self._producer.produce(self._kafka.dlq_topic, value=bytes(raw), headers=headers,
                               on_delivery=lambda err, _msg: errors.append(err))
        self._producer.flush(60)
        if not errors or errors[0] is not None:
            raise RuntimeError(f"dead-letter publish failed: {errors[0] if errors else 'timeout'}")
        return 1

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
