"""The two milestone-1 jobs as one Flink graph each: DataStream for Kafka and Python, SQL for
the keep-first by event_id, Java operators (abacus/jvm) for the rest; all per-record state
in the JVM, RocksDB-backed.

    KafkaSource (value, seed: abacus.sink.SeedMarking reads the seed header)
      -> Validate (Python, counting.parse_event) --rejected--> DeadLetter (Kafka DLQ)
         [statistic] --seeds--> seed rows (counting.seeds) to Uniques' second input
         (no record fails the job: what Validate cannot handle is dead-lettered too)
         the event row carries the contract's bucket labels (counting.bucket_labels) and
         facet pairs (counting.account_facets)
      -> SQL: keep-first by event_id (ROW_NUMBER ... = 1, state TTL), counted(n) for drain
      -> [statistic] abacus.sink.Uniques, keyed by (company, statistic, customer): a row per
         account key (every label with every pair), count 1, uniques 1 when the customer is
         first for that key: checked hour, then day among the hour's firsts, then month
         among the day's (uniques do not roll up); seed rows mark pairs as counted, and
         emit nothing
         [customer] abacus.sink.CustomerRows: a row per resolution, count 1
      -> CounterSink (Java, chained): sums increments per counter key in memory and
         writes the sums every window_ms (count = count + d, uniques = uniques + u), all of
         them before a checkpoint barrier passes it

The sink's interval only batches writes: the buckets come from counting's labels.
The SQL is assembled from this module's own column names; no input reaches it.

Where the rules live: Validate calls `counting` (validation, labels, facet pairs). The Java
operators know no column by position and no width: this module gives them their columns by
name, the resolutions and period widths (`operator_conf`) and the store's layout
(`layout_conf`, from `storage.counters.sink_layout`: key order, partition, index entry and
date, shard fields). Four rules are written again in Java for speed: the fan-out and
uniqueness (`Uniques`, `CustomerRows`: `counting.Recount`), the shard hash and the batching
(`Sums`: `storage.counters.shard_of`, `batches`) and the drain file (`Progress`:
`abacus.progress`); their JUnit tests (abacus/jvm/src/test, run by `make test`) require the
results of golden vectors that `abacus.golden` generates from the Python rules.
"""
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway
from pyflink.table import DataTypes, Schema, StreamTableEnvironment
from pyflink.table.types import _to_java_data_type

from abacus.operators import DeadLetter, Validate
from counting import RESOLUTIONS
from counting.seeds import SEED_HEADER
from settings import Settings
from storage.counters import BATCH_ROWS, PERIOD_WIDTH, SinkLayout, sink_layout

Kind = Literal["statistic", "customer"]
KINDS: tuple[Kind, ...] = ("statistic", "customer")
TARGETS: tuple[str, ...] = ("shadow", "serving")

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
# raw bytes, reason, detail, event_id, escaped, truncated (abacus.operators.rejected_row)
_REJECTED = Types.ROW(
    [_BYTES, Types.STRING(), Types.STRING(), Types.STRING(), Types.BOOLEAN(), Types.STRING()]
)
_EVENT_FIELDS = [
    "event_id",
    "company_id",
    "customer_id",
    "statistic_id",
    *(f"b_{r}" for r in RESOLUTIONS),
    "facets",
    "facet_values",
]
_EVENT = Types.ROW_NAMED(
    _EVENT_FIELDS, [Types.STRING()] * 7 + [Types.OBJECT_ARRAY(Types.STRING())] * 2
)
# the customer job's events end at the labels (it counts no facet)
_CUSTOMER_EVENT = Types.ROW_NAMED(_EVENT_FIELDS[:7], [Types.STRING()] * 7)
# a seed's rows (abacus.operators.seed_rows), Uniques' second input
_SEED_FIELDS = [
    "company_id",
    "statistic_id",
    "customer_id",
    "resolution",
    "bucket",
    "facets",
    "facet_values",
]
_SEED = Types.ROW_NAMED(
    _SEED_FIELDS, [Types.STRING()] * 5 + [Types.OBJECT_ARRAY(Types.STRING())] * 2
)

# The Java operators' input (first deliveries) and output rows (key fields, measures, index
# date: abacus.sink.Uniques for the statistic job, abacus.sink.CustomerRows for the customer
# job); the output is checked against the store's layout.
_LABELS = tuple(f"b_{r}" for r in RESOLUTIONS)
_FIRSTS = {
    "statistic": ("company_id", "statistic_id", "customer_id", *_LABELS, "facets", "facet_values"),
    "customer": ("company_id", "customer_id", "statistic_id", *_LABELS),
}
_ROWS = {
    "statistic": (
        "company_id",
        "statistic_id",
        "period",
        "bucket",
        "resolution",
        "facet",
        "value",
        "count",
        "uniques",
        "index_date",
    ),
    "customer": (
        "company_id",
        "customer_id",
        "period",
        "statistic_id",
        "bucket",
        "resolution",
        "count",
        "index_date",
    ),
}
_SINK_ATTEMPTS, _SINK_BACKOFF_MS = 6, 500  # a write's attempts, the first retry's delay


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything that defines one job run (what the runner process is given)."""

    kind: Kind
    target: str
    name: str  # the job's name: state file, checkpoints, consumer group ("abacus-" + name)
    window_ms: int  # the sink writes what it has summed this often
    dedup_ttl_s: int
    uniques_ttl_s: int
    progress_dir: str  # "" = no drain counters (remote cluster)
    run_started_ms: int
    topic: str = ""  # the topic it counts; "" = kafka.topic (requests of older versions)

    @property
    def group_id(self) -> str:
        return f"abacus-{self.name}"

    @property
    def source(self) -> str:
        """The DLQ `source` header: which job dead-lettered the record."""
        return f"abacus-{self.kind}"


def operator_conf(kind: Kind, layout: SinkLayout) -> dict[str, str]:
    """What a job's Java operator (`abacus.sink.Uniques`, `abacus.sink.CustomerRows`: their
    `RowSpec`) is told about its rows, so that it knows no column by position and no rule
    of the contract by heart: its input and output columns by name, the resolutions finest
    first (`counting.RESOLUTIONS`) with each one's label column and period width
    (`storage.counters.PERIOD_WIDTH`), and which resolution's rows carry an index date, the
    label's prefix of `date_width` characters (`storage.counters.sink_layout`, from
    `counting`'s date of a label)."""
    seeds = {"seed_input": ",".join(_SEED_FIELDS)} if kind == "statistic" else {}
    return {
        **seeds,
        "input": ",".join(_FIRSTS[kind]),
        "output": ",".join(_ROWS[kind]),
        "resolutions": ",".join(RESOLUTIONS),
        "labels": ",".join(_LABELS),
        "period_widths": ",".join(str(PERIOD_WIDTH[r]) for r in RESOLUTIONS),
        "indexed": layout.index_resolution,
        "date_width": str(layout.date_width),
    }


def _increments(
    tenv: StreamTableEnvironment, spec: JobSpec, layout: SinkLayout, seeds: object
) -> object:
    """A job's increments, a Java DataStream of rows (key fields, measures, index date), from
    its first deliveries, by a Java operator chained to the sink (abacus/jvm):
    `abacus.sink.Uniques` for the statistic job (fan-out and uniqueness, keyed by customer,
    absorbing the Java stream of seed rows `seeds`), `abacus.sink.CustomerRows` for the
    customer job (a row per resolution)."""
    names = _ROWS[spec.kind]
    if (layout.keys, layout.measures) != (names[: len(layout.keys)], names[len(layout.keys) : -1]):
        raise AssertionError(
            f"the {spec.kind} job's rows {names} do not match the store's layout {layout}"
        )
    firsts = tenv.sql_query(f"SELECT {', '.join(_FIRSTS[spec.kind])} FROM firsts")._j_table
    j_firsts = tenv._j_tenv.toDataStream(firsts, _row_data_type(firsts))
    row = DataTypes.ROW(
        [
            DataTypes.FIELD(
                name, DataTypes.BIGINT() if name in layout.measures else DataTypes.STRING()
            )
            for name in names
        ]
    )
    jvm = get_gateway().jvm
    out_type = jvm.org.apache.flink.table.runtime.typeutils.InternalTypeInfo.of(
        _to_java_data_type(row).getLogicalType()
    )
    conf = _java_map(operator_conf(spec.kind, layout))
    if spec.kind == "statistic":
        return jvm.abacus.sink.Uniques.apply(
            j_firsts, seeds, spec.uniques_ttl_s * 1000, conf, out_type
        )
    return jvm.abacus.sink.CustomerRows.apply(j_firsts, conf, out_type)


def _java_map(values: dict[str, str]) -> object:
    conf = get_gateway().jvm.java.util.HashMap()
    for key, value in values.items():
        conf.put(key, value)
    return conf


def job_name(kind: str, target: str, prefix: str = "") -> str:
    """`statistic`, `customer` (shadow, the default stage), `statistic-serving`, ..."""
    return f"{prefix}{kind}" + ("" if target == "shadow" else f"-{target}")


def job_topic(settings: Settings, spec: JobSpec) -> str:
    """The topic a job counts: its own (`abacus job run --topic`), else kafka.topic."""
    return spec.topic or settings.kafka.topic


def kafka_source(settings: Settings, spec: JobSpec) -> KafkaSource:
    """The job's topic from its committed offsets (the beginning for a new group); records
    as (value, seed): `abacus.sink.SeedMarking` says which carry the seed header."""
    kafka = settings.kafka
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(kafka.bootstrap_servers)
        .set_topics(job_topic(settings, spec))
        .set_group_id(spec.group_id)
        .set_client_id_prefix(spec.group_id)
        # a new group starts from the beginning of the topic; a restored job from its state
        .set_starting_offsets(
            KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)
        )
        .set_property("commit.offsets.on.checkpoint", "true")
        .set_property("partition.discovery.interval.ms", "30000")
        # at low rates a fetch per few records costs the broker and the job more than the
        # records: wait up to 50 ms for 1 MiB (a full fetch returns at once)
        .set_property("fetch.min.bytes", str(1 << 20))
        .set_property("fetch.max.wait.ms", "50")
        .set_property("security.protocol", kafka.security_protocol)
    )
    if kafka.sasl_mechanism:
        builder.set_property("sasl.mechanism", kafka.sasl_mechanism)
    if kafka.sasl_username:
        module = (
            "org.apache.kafka.common.security.scram.ScramLoginModule"
            if kafka.sasl_mechanism and "SCRAM" in kafka.sasl_mechanism
            else "org.apache.kafka.common.security.plain.PlainLoginModule"
        )
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        builder.set_property(
            "sasl.jaas.config",
            f'{module} required username="{kafka.sasl_username}" password="{password}";',
        )
    if kafka.ssl_cafile:
        builder.set_property("ssl.truststore.type", "PEM")
        builder.set_property("ssl.truststore.location", str(Path(kafka.ssl_cafile).resolve()))
    builder._j_builder.setDeserializer(get_gateway().jvm.abacus.sink.SeedMarking(SEED_HEADER))
    return builder.build()


def build(env: StreamExecutionEnvironment, settings: Settings, spec: JobSpec) -> None:
    """Add one job's operators to `env` (execute it afterwards)."""
    tenv = StreamTableEnvironment.create(env)
    # the SQL state is the keep-first by event_id (uniqueness is abacus.sink.Uniques)
    tenv.get_config().set("table.exec.state.ttl", f"{spec.dedup_ttl_s * 1000} ms")

    raw = env.from_source(
        kafka_source(settings, spec), WatermarkStrategy.no_watermarks(), "kafka"
    ).uid("kafka-source")
    rejected = OutputTag("rejected", _REJECTED)
    statistic = spec.kind == "statistic"
    seeds = OutputTag("seeds", _SEED) if statistic else None
    valid = (
        raw.process(
            Validate(rejected, facets=statistic, seeds=seeds),
            output_type=_EVENT if statistic else _CUSTOMER_EVENT,
        )
        .uid("validate")
        .name("validate")
    )
    # its own task (not chained to Validate): a publish that fails then fails with its own
    # error (chained, pemja hands Validate only "Could not forward element to next
    # operator"), and a slow DLQ does not stall Validate until the buffers between fill
    (
        valid.get_side_output(rejected)
        .map(DeadLetter(settings.kafka, spec.source), output_type=Types.INT())
        .uid("dead-letter")
        .name("dead-letter")
        .start_new_chain()
    )

    schema = Schema.new_builder()
    for field in _EVENT_FIELDS if statistic else _EVENT_FIELDS[:7]:
        schema.column(
            field,
            DataTypes.ARRAY(DataTypes.STRING())
            if field.startswith("facet")
            else DataTypes.STRING(),
        )
    tenv.create_temporary_view(
        "events",
        tenv.from_data_stream(valid, schema.column_by_expression("pt", "PROCTIME()").build()),
    )
    # keep-first by event_id; `counted(n)` adds each first delivery's count increments to
    # the drain counter (3 resolutions x its facet pairs, or 3 for the customer job)
    n = len(RESOLUTIONS)
    per_event = f"{n} * CARDINALITY(facets)" if statistic else str(n)
    counted = ""
    if spec.progress_dir:
        tenv._j_tenv.createTemporarySystemFunction(  # Java: abacus/jvm, abacus.sink.Counted
            "counted", get_gateway().jvm.abacus.sink.Counted(spec.progress_dir)
        )
        counted = f" AND counted({per_event})"
    tenv.execute_sql(
        "CREATE TEMPORARY VIEW firsts AS SELECT * FROM (SELECT *, ROW_NUMBER() OVER "
        f"(PARTITION BY event_id ORDER BY pt) AS rn FROM events) WHERE rn = 1{counted}"
    )
    layout = sink_layout(
        settings.cassandra, spec.target, "account" if spec.kind == "statistic" else "customer"
    )
    j_seeds = valid.get_side_output(seeds)._j_data_stream if seeds is not None else None
    j_stream = _increments(tenv, spec, layout, j_seeds)
    (
        j_stream.sinkTo(_counter_sink(settings, spec, layout))  # type: ignore[attr-defined]
        .uid("counter-sink")
        .name(f"counter-sink-{spec.target}")
    )


def _row_data_type(j_table: object) -> object:
    """The table's rows as Flink's internal RowData (no conversion per field)."""
    row_data = get_gateway().jvm.org.apache.flink.table.data.RowData._java_lang_class
    return j_table.getResolvedSchema().toPhysicalRowDataType().bridgedTo(row_data)  # type: ignore[attr-defined]


def layout_conf(layout: SinkLayout) -> dict[str, str]:
    """The sink's rules from the store's layout: which key fields form the partition, the
    index entry's fields and the shard's, the shards, the rows per batch (`Sums` in
    abacus/jvm holds them; the sink assumes none of them)."""
    return {
        "update": layout.update,
        "index": layout.index,
        "keys": str(len(layout.keys)),
        "measures": str(len(layout.measures)),
        "partition_keys": str(layout.partition_keys),
        "index_fields": ",".join(map(str, layout.index_fields)),
        "shard_fields": ",".join(map(str, layout.shard_fields)),
        "shards": str(layout.shards),
        "batch_rows": str(BATCH_ROWS),
    }


def _counter_sink(settings: Settings, spec: JobSpec, layout: SinkLayout) -> object:
    """The Java sink (abacus/jvm: abacus.sink.CounterSink) configured for one counter store:
    rows are the layout's key fields, its measures, then the index date."""
    cassandra = settings.cassandra
    values = {
        "hosts": ",".join(cassandra.hosts),
        "port": cassandra.port,
        "local_dc": cassandra.local_dc or "",
        "username": cassandra.username or "",
        "password": cassandra.password.get_secret_value() if cassandra.password else "",
        "ssl": str(cassandra.ssl).lower(),
        "ssl_cafile": str(cassandra.ssl_cafile or ""),
        "request_timeout_ms": int(cassandra.request_timeout_s * 1000),
        **layout_conf(layout),
        "interval_ms": spec.window_ms,
        "concurrency": cassandra.write_concurrency,
        "batch_partitions": cassandra.batch_partitions,
        "attempts": _SINK_ATTEMPTS,
        "backoff_ms": _SINK_BACKOFF_MS,
        "progress_dir": spec.progress_dir,
    }
    conf = _java_map({key: str(value) for key, value in values.items()})
    return get_gateway().jvm.abacus.sink.CounterSink(conf)


def checkpoint_root(settings: Settings, name: str) -> Path:
    """Absolute checkpoint directory of one job name (Flink adds <job id>/chk-<n>)."""
    return settings.flink.checkpoint_dir.expanduser().resolve() / name


def latest_checkpoint(settings: Settings, name: str) -> Path | None:
    """The newest complete retained checkpoint or savepoint of a job name, if any."""
    root = checkpoint_root(settings, name)
    found = [
        p.parent
        for p in [*root.glob("*/chk-*/_metadata"), *root.glob("savepoints/savepoint-*/_metadata")]
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
