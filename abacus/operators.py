"""The Python operators of both jobs: thin adapters around the counting contract.

They run inside Flink (thread mode: the JVM's embedded interpreter) and hold no state:
de-duplication is Flink SQL in the JVM (`abacus/pipeline.py`); fan-out, uniqueness, the
counter sink and the drain counter are Java (`abacus/jvm`).
What these classes count by is a call into `counting` (validation, labels, facet pairs:
`event_row`); they only convert rows and do I/O. Not every rule of the jobs is: for speed,
the Java operators re-implement the fan-out and uniqueness (`counting.Recount`), and the
sink storage's shard hash and batching (`storage.counters`) and the drain file
(`abacus.progress`); Python gives them every column, resolution and width
(`abacus.pipeline.operator_conf`, `layout_conf`), and JUnit tests (`make test`) check each
re-implemented rule against golden vectors that `abacus.golden` generates from Python.

Seed records (issue 14's hand-over, `counting.seeds`) arrive marked by their Kafka header
(the source's `abacus.sink.SeedMarking` gives each record as (value, seed)): Validate turns a
seed into seed rows for the statistic job's uniqueness state (`seed_rows`), which count
nothing; the customer job drops seeds. A record without the header is an event, whatever
its body.

No record may fail the job: a publisher controls every byte of the input, and a job that
fails on a record fails on it again after every restart. So Validate dead-letters what it
cannot handle (`operator_error`, with the exception) instead of raising, and a dead letter is
writable whatever the event held: its headers are escaped (`counting.text.escape`: lone
surrogates, invalid bytes) and bounded (`MAX_HEADER_CHARS`), and say so (`escaped`,
`truncated`); a value the DLQ topic refuses as too large is written as its head
(`truncated_to`). Only a DLQ that is unreachable, or refuses even that head, fails the job
(restarted, then FAILED with the reason: see `abacus job status`): the record is not dropped.

Metrics, in each operator's Flink metric group (the job's reporter exports them: Prometheus
names in services/rules/records.yml): `eventsParsed` (Validate: valid events, one counter
increment per event, about 0.75 us in thread mode, a tenth of the parse), and
`deadLettered` in a `reason` group (DeadLetter, once the DLQ acknowledged the record).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import MapFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.metrics import Counter, MetricGroup

from counting import (
    Event,
    Rejection,
    account_facets,
    bucket_labels,
    parse_event,
)
from counting.seeds import Seed, SeedError, parse_seed, seed_groups
from counting.text import escape
from settings import KafkaSettings

EVENTS_PARSED = "eventsParsed"  # Validate's metric: valid events
DEAD_LETTERED = "deadLettered"  # DeadLetter's metric, in a group per reason (a label)
OPERATOR_ERROR = "operator_error"  # the DLQ reason of a record an operator failed on
BAD_SEED = "bad_seed"  # the DLQ reason of a record with the seed header that is no seed
# the longest header values (characters, after escaping); longer ones are cut and listed in
# the `truncated` header with their full length
MAX_HEADER_CHARS = {"reason": 64, "detail": 1024, "event_id": 256}
DLQ_FALLBACK_BYTES = 256 * 1024  # a value the DLQ topic refuses is retried with this head
DLQ_MAX_MESSAGE_BYTES = 8 * 1024 * 1024 + 64 * 1024  # the topics take up to 8 MiB records

# -- validation ----------------------------------------------------------------------------


class Validate(ProcessFunction):
    """A Kafka record as (value, seed) -> one event row, or a rejected row (`rejected_row`:
    raw bytes, reason, detail, event_id, escaped, truncated) to a side output: every check is
    `counting.parse_event` on the bytes exactly as received, and any other error on a record
    rejects it as `operator_error` instead of failing the job.

    A seed (the record carries the seed header) gives its seed rows (`seed_rows`) to the
    `seeds` side output, or nothing when `seeds` is None (the customer job); a record with
    the header that is no seed is dead-lettered as `bad_seed`. Seeds bypass the
    de-duplication by event_id (they have none).

    The event row carries what the jobs count by, as the contract computes it: the event's
    local (hour, day, month) labels (`counting.bucket_labels`) and the (facet, value) pairs
    it counts under (`counting.account_facets`, the total first) as two parallel arrays (an
    array of rows arrives in the JVM as copies of one reused row). Its account keys are every
    label with every pair, which the Java operator `abacus.sink.Uniques` forms. The customer
    job counts no facet: its rows (`facets=False`) end at the labels.
    """

    def __init__(
        self, rejected: OutputTag, facets: bool = True, seeds: OutputTag | None = None
    ) -> None:
        self._rejected = rejected
        self._facets = facets  # the customer job counts no facet: its rows end at the labels
        self._seeds = seeds
        self._parsed: Counter | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self._parsed = runtime_context.get_metrics_group().counter(EVENTS_PARSED)

    def process_element(
        self, record: tuple[bytes, bool], ctx: ProcessFunction.Context
    ) -> Iterator[Any]:
        value, seed = record
        if seed:
            yield from self._seed(value)
            return
        event_id: str | None = None
        try:
            parsed = parse_event(value)
            if isinstance(parsed, Rejection):
                out = (
                    self._rejected,
                    rejected_row(value, parsed.reason.value, parsed.detail, parsed.event_id),
                )
            else:
                event_id = parsed.event_id
                out = self._row(parsed)
                if self._parsed is not None:
                    self._parsed.inc()
        except Exception as exc:  # never fail the job on a record: dead-letter it
            out = self._rejected, rejected_row(value, OPERATOR_ERROR, describe(exc), event_id)
        yield out

    def _row(self, parsed: Event) -> Row:
        return Row(*event_row(parsed, self._facets))

    def _seed(self, value: bytes) -> Iterator[Any]:
        try:
            parsed = parse_seed(value)
            rows = [Row(*row) for row in seed_rows(parsed)] if self._seeds is not None else []
        except SeedError as exc:
            yield self._rejected, rejected_row(value, BAD_SEED, str(exc), None)
            return
        except Exception as exc:  # never fail the job on a record: dead-letter it
            yield self._rejected, rejected_row(value, OPERATOR_ERROR, describe(exc), None)
            return
        for row in rows:
            yield self._seeds, row


def seed_rows(seed: Seed) -> Iterator[tuple[Any, ...]]:
    """The values of a seed's rows (`abacus.pipeline._SEED_FIELDS`): per (statistic,
    resolution, bucket) of the keys it marks (`counting.seeds.seed_groups`, coarser
    resolutions included): company_id, statistic_id, customer_id, resolution, bucket, and
    the facet names and values of its pairs, as two lists."""
    for statistic, resolution, bucket, pairs in seed_groups(seed):
        names, values = zip(*pairs, strict=True)
        yield (
            seed.company_id,
            statistic,
            seed.customer_id,
            resolution,
            bucket,
            list(names),
            list(values),
        )


def event_row(event: Event, facets: bool = True) -> tuple[Any, ...]:
    """The values of Validate's event row (`abacus.pipeline._EVENT_FIELDS`): event_id,
    company_id, customer_id, statistic_id, the (hour, day, month) labels, and with `facets`
    the facet names and values of the pairs it counts under, as two lists."""
    labels = bucket_labels(event.timestamp, event.timezone)
    ids = (event.event_id, event.company_id, event.customer_id, event.statistic_id)
    if not facets:
        return (*ids, *labels)
    names, values = zip(*account_facets(event), strict=True)
    return (*ids, *labels, list(names), list(values))


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, whatever its `__str__` does."""
    try:
        text = str(exc)
    except Exception:  # a hostile or broken __str__
        text = "<message not printable>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def rejected_row(raw: bytes, reason: str, detail: str, event_id: str | None) -> Row:
    """The side output's row: the original bytes and the DLQ headers' texts, escaped and
    bounded here, so that every string in the row encodes to UTF-8 (the row may cross into
    the JVM, and is written as Kafka headers): (raw, reason, detail, event_id, escaped,
    truncated), `escaped` true when some text had to be escaped, `truncated` the headers
    that were cut, as `name=full length` separated by commas."""
    escaped, truncated = False, []
    texts = []
    for name, text in (("reason", reason), ("detail", detail), ("event_id", event_id or "")):
        text, changed = escape(text)
        escaped |= changed
        limit = MAX_HEADER_CHARS[name]
        if len(text) > limit:
            truncated.append(f"{name}={len(text)}")
            text = text[:limit]
        texts.append(text)
    return Row(raw, *texts, escaped, ",".join(truncated))


def dead_letter_headers(row: Row | tuple[Any, ...], source: str) -> list[tuple[str, bytes]]:
    """A rejected row's Kafka headers: reason, detail, event_id, source, and `escaped: 1`
    and `truncated: name=length,...` when that happened to a text."""
    _raw, reason, detail, event_id, escaped, truncated = row
    headers = [
        ("reason", reason.encode()),
        ("detail", detail.encode()),
        ("event_id", event_id.encode()),
        ("source", source.encode()),
    ]
    if escaped:
        headers.append(("escaped", b"1"))
    if truncated:
        headers.append(("truncated", truncated.encode()))
    return headers


class DeadLetter(MapFunction):
    """Publishes each rejected event to the DLQ topic: original bytes, reason in headers.

    Synchronous (flush per record): invalid events are rare, and a record is acknowledged
    by Kafka before the checkpoint that covers its offset can complete, so none is lost.
    A value the topic refuses as too large is written again as its first
    `DLQ_FALLBACK_BYTES` with a `truncated_to` header (as the bridge does); any other
    delivery failure fails the job (the DLQ is unreachable: a restart may help, a record
    cannot).
    """

    def __init__(self, kafka: KafkaSettings, source: str) -> None:
        self._kafka, self._source = kafka, source
        self._producer: Any = None
        self._metrics: MetricGroup | None = None
        self._dead_lettered: dict[str, Counter] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        from confluent_kafka import Producer

        self._metrics = runtime_context.get_metrics_group()

        self._producer = Producer(
            {
                **self._kafka.client_config(),
                "acks": "all",
                "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
            }
        )

    def map(self, value: Row) -> int:
        raw = bytes(value[0])
        headers = dead_letter_headers(value, self._source)
        error = self._publish(raw, headers)
        if error is not None and _refused_as_too_large(error) and len(raw) > DLQ_FALLBACK_BYTES:
            headers.append(("truncated_to", str(DLQ_FALLBACK_BYTES).encode()))
            error = self._publish(raw[:DLQ_FALLBACK_BYTES], headers)
        if error is not None:
            raise RuntimeError(f"dead-letter publish to {self._kafka.dlq_topic} failed: {error}")
        self._count(value[1])
        return 1

    def _count(self, reason: str) -> None:
        """One more dead letter of `reason` (the reasons are a short fixed list: a counter
        each, in a `reason` group, which the reporter makes a label)."""
        if self._metrics is None:
            return
        counter = self._dead_lettered.get(reason)
        if counter is None:
            counter = self._metrics.add_group("reason", reason).counter(DEAD_LETTERED)
            self._dead_lettered[reason] = counter
        counter.inc()

    def _publish(self, raw: bytes, headers: list[tuple[str, bytes]]) -> Any:
        """Produce and wait for the broker's answer: None, or the error."""
        from confluent_kafka import KafkaException

        errors: list[Any] = []
        try:
            self._producer.produce(
                self._kafka.dlq_topic,
                value=raw,
                headers=headers,
                on_delivery=lambda err, _msg: errors.append(err),
            )
        except KafkaException as exc:  # refused before sending (e.g. over message.max.bytes)
            return exc.args[0] if exc.args else exc
        self._producer.flush(60)
        return errors[0] if errors else "no answer from Kafka in 60 s"

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)


def _refused_as_too_large(error: Any) -> bool:
    from confluent_kafka import KafkaError

    code = error.code() if hasattr(error, "code") else None
    return code in (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    )
