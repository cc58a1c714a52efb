"""The two milestone-1 jobs as one Flink graph each: DataStream for Kafka and Python, SQL for
every piece of per-record state (in the JVM, RocksDB-backed).

    KafkaSource (raw bytes)
      -> Validate (Python, counting.parse_event) --rejected--> DeadLetter (Kafka DLQ)
         the event row carries the contract's bucket labels (counting.bucket_labels) and
         facet pairs (counting.account_facets)
      -> SQL: keep-first by event_id (ROW_NUMBER ... = 1, state TTL), counted(n) for drain
      -> count increments: one per key at each resolution (the contract's labels)
      -> [statistic] fan-out: CROSS JOIN UNNEST of the facet pairs; keep-first by (key,
         customer) at hour, then day among the hour's firsts, then month among the day's:
         the unique increments at every resolution (uniques do not roll up)
      -> CounterSink (Java, abacus/jvm): sums increments per counter key in memory and
         writes the sums every window_ms (count = count + d, uniques = uniques + u), all of
         them before a checkpoint barrier passes it

The sink's interval only batches writes: the buckets come from counting's labels.
The SQL is assembled from this module's own column names and integers; no input reaches it.
"""
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import ByteArraySchema
from pyflink.datastream import OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway
from pyflink.table import DataTypes, Schema, StreamTableEnvironment, Table
from pyflink.table.types import _to_java_data_type

from abacus.operators import DeadLetter, Validate
from counting import RESOLUTIONS
from settings import Settings
from storage.counters import BATCH_ROWS, PERIOD_WIDTH, SinkLayout, sink_layout

Kind = Literal["statistic", "customer"]
KINDS: tuple[Kind, ...] = ("statistic", "customer")
TARGETS: tuple[str, ...] = ("shadow", "serving")

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
_REJECTED = Types.ROW([_BYTES, Types.STRING(), Types.STRING(), Types.STRING()])
_EVENT_FIELDS = ["event_id", "company_id", "customer_id", "statistic_id",
                 *(f"b_{r}" for r in RESOLUTIONS), "facets", "facet_values"]
_EVENT = Types.ROW_NAMED(_EVENT_FIELDS, [Types.STRING()] * 7
                         + [Types.OBJECT_ARRAY(Types.STRING())] * 2)

# the rows abacus.sink.Uniques emits: the account key, the measures, the index date
_ACCOUNT_ROW = ("company_id", "statistic_id", "period", "bucket", "resolution", "facet",
                "value", "count", "uniques", "index_date")
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

    @property
    def group_id(self) -> str:
        return f"abacus-{self.name}"

    @property
    def source(self) -> str:
        """The DLQ `source` header: which job dead-lettered the record."""
        return f"abacus-{self.kind}"



def _account_increments(tenv: StreamTableEnvironment, spec: JobSpec,
                        layout: SinkLayout) -> object:
    """The statistic job's increments, a Java DataStream of rows (account key, count,
    uniques, index date): the fan-out and the uniqueness check are one keyed Java operator
    (abacus/jvm: abacus.sink.Uniques) over the first deliveries, chained to the sink."""
    if (layout.keys, layout.measures) != (_ACCOUNT_ROW[:7], _ACCOUNT_ROW[7:9]):
        raise AssertionError(f"the uniques operator's rows {_ACCOUNT_ROW} do not match the "
                             f"store's layout {layout}")
    firsts = tenv.sql_query("SELECT company_id, statistic_id, customer_id, b_hour, b_day, "
                            "b_month, facets, facet_values FROM firsts")
    j_firsts = firsts._j_table
    j_stream = tenv._j_tenv.toDataStream(j_firsts, _row_data_type(j_firsts))
    row = DataTypes.ROW([DataTypes.FIELD(name, DataTypes.BIGINT() if name in layout.measures
                                         else DataTypes.STRING()) for name in _ACCOUNT_ROW])
    jvm = get_gateway().jvm
    out_type = jvm.org.apache.flink.table.runtime.typeutils.InternalTypeInfo.of(
        _to_java_data_type(row).getLogicalType())
    return jvm.abacus.sink.Uniques.apply(j_stream, spec.uniques_ttl_s * 1000,
                                         *(PERIOD_WIDTH[r] for r in RESOLUTIONS), out_type)


def _customer_increments(tenv: StreamTableEnvironment) -> str:
    """The customer job's increments: (customer key, count, index date) rows, a count at
    every resolution for each event."""
    tenv.create_temporary_view("customer_firsts", _computed_once(tenv, tenv.sql_query(
        "SELECT company_id, customer_id, statistic_id, b_hour, b_day, b_month FROM firsts")))
    return " UNION ALL ".join(
        f"SELECT company_id, customer_id, {_period(r)} AS `period`, statistic_id, b_{r} AS "
        f"bucket, {_text(r)} AS resolution, CAST(1 AS BIGINT) AS c, {_index_date(r)} AS "
        "index_date FROM customer_firsts" for r in RESOLUTIONS)


def _period(resolution: str) -> str:
    """The key's partition period (storage.period_of, from the same widths)."""
    return f"SUBSTRING(b_{resolution} FROM 1 FOR {PERIOD_WIDTH[resolution]})"


def _index_date(resolution: str) -> str:
    """Each hour row carries its local date (its day label: counting.bucket_date of the
    hour) for the store's per-date key index; other rows none."""
    return "b_day" if resolution == RESOLUTIONS[0] else "CAST(NULL AS STRING)"


def _computed_once(tenv: StreamTableEnvironment, table: Table) -> Table:
    """`table` through a DataStream and back, with a new processing-time column `pt`.

    A view read twice is planned twice: each reader prunes the columns it does not need, so
    the two plans differ and the planner does not reuse one for both, and every stateful
    operator in it (a uniqueness check) would run, and keep its state, twice. The planner
    cannot see through a DataStream, so this one is computed once.

    The stream carries Flink's internal RowData, so neither side converts a field (PyFlink's
    `to_data_stream` would make external Rows of Java Strings and back: a quarter of the
    statistic job's CPU, sink aside); PyFlink has no call for that, hence the Java API."""
    j_table = table._j_table
    j_stream = tenv._j_tenv.toDataStream(j_table, _row_data_type(j_table))
    schema = Schema.new_builder().column_by_expression("pt", "PROCTIME()").build()
    return Table(tenv._j_tenv.fromDataStream(j_stream, schema._j_schema), tenv)


def _text(literal: str) -> str:
    """A STRING literal: a bare 'day' is CHAR(3), and a UNION of CHARs pads them to one width."""
    return f"CAST('{literal}' AS STRING)"


def job_name(kind: str, target: str, prefix: str = "") -> str:
    """`statistic`, `customer` (shadow, the default stage), `statistic-serving`, ..."""
    return f"{prefix}{kind}" + ("" if target == "shadow" else f"-{target}")


def kafka_source(settings: Settings, spec: JobSpec) -> KafkaSource:
    kafka = settings.kafka
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(kafka.bootstrap_servers)
        .set_topics(kafka.topic)
        .set_group_id(spec.group_id)
        .set_client_id_prefix(spec.group_id)
        # a new group starts from the beginning of the topic; a restored job from its state
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(
            KafkaOffsetResetStrategy.EARLIEST))
        .set_value_only_deserializer(ByteArraySchema())
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
        module = ("org.apache.kafka.common.security.scram.ScramLoginModule"
                  if kafka.sasl_mechanism and "SCRAM" in kafka.sasl_mechanism
                  else "org.apache.kafka.common.security.plain.PlainLoginModule")
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        builder.set_property("sasl.jaas.config", f'{module} required username="'
                             f'{kafka.sasl_username}" password="{password}";')
    if kafka.ssl_cafile:
        builder.set_property("ssl.truststore.type", "PEM")
        builder.set_property("ssl.truststore.location", str(Path(kafka.ssl_cafile).resolve()))
    return builder.build()


def build(env: StreamExecutionEnvironment, settings: Settings, spec: JobSpec) -> None:
    """Add one job's operators to `env` (execute it afterwards)."""
    tenv = StreamTableEnvironment.create(env)
    # the SQL state is the keep-first by event_id (uniqueness is abacus.sink.Uniques)
    tenv.get_config().set("table.exec.state.ttl", f"{spec.dedup_ttl_s * 1000} ms")

    raw = env.from_source(kafka_source(settings, spec), WatermarkStrategy.no_watermarks(),
                          "kafka").uid("kafka-source")
    rejected = OutputTag("rejected", _REJECTED)
    valid = raw.process(Validate(rejected), output_type=_EVENT).uid("validate").name("validate")
    (valid.get_side_output(rejected)
     .map(DeadLetter(settings.kafka, spec.source), output_type=Types.INT())
     .uid("dead-letter").name("dead-letter"))

    schema = Schema.new_builder()
    for field in _EVENT_FIELDS:
        schema.column(field, DataTypes.ARRAY(DataTypes.STRING()) if field.startswith("facet")
                      else DataTypes.STRING())
    tenv.create_temporary_view("events", tenv.from_data_stream(
        valid, schema.column_by_expression("pt", "PROCTIME()").build()))
    # keep-first by event_id; `counted(n)` adds each first delivery's count increments to
    # the drain counter (3 resolutions x its facet pairs, or 3 for the customer job)
    n = len(RESOLUTIONS)
    per_event = f"{n} * CARDINALITY(facets)" if spec.kind == "statistic" else str(n)
    counted = ""
    if spec.progress_dir:
        tenv._j_tenv.createTemporarySystemFunction(  # Java: abacus/jvm, abacus.sink.Counted
            "counted", get_gateway().jvm.abacus.sink.Counted(spec.progress_dir))
        counted = f" AND counted({per_event})"
    tenv.execute_sql(
        "CREATE TEMPORARY VIEW firsts AS SELECT * FROM (SELECT *, ROW_NUMBER() OVER "
        f"(PARTITION BY event_id ORDER BY pt) AS rn FROM events) WHERE rn = 1{counted}")
    if spec.kind == "statistic":
        layout = sink_layout(settings.cassandra, spec.target, "account")
        j_stream = _account_increments(tenv, spec, layout)
    else:
        layout = sink_layout(settings.cassandra, spec.target, "customer")
        increments = tenv.sql_query(_customer_increments(tenv))
        columns = list(increments.get_resolved_schema().get_column_names())  # keys, measures, date
        if (columns[:len(layout.keys)] != list(layout.keys)
                or len(columns) != len(layout.keys) + len(layout.measures) + 1):
            raise AssertionError(f"increments {columns} do not match the store's layout {layout}")
        j_table = increments._j_table
        j_stream = tenv._j_tenv.toDataStream(j_table, _row_data_type(j_table))
    (j_stream.sinkTo(_counter_sink(settings, spec, layout))  # type: ignore[attr-defined]
     .uid("counter-sink").name(f"counter-sink-{spec.target}"))


def _row_data_type(j_table: object) -> object:
    """The table's rows as Flink's internal RowData (no conversion per field)."""
    row_data = get_gateway().jvm.org.apache.flink.table.data.RowData._java_lang_class
    return j_table.getResolvedSchema().toPhysicalRowDataType().bridgedTo(row_data)  # type: ignore[attr-defined]


def _counter_sink(settings: Settings, spec: JobSpec, layout: SinkLayout) -> object:
    """The Java sink (abacus/jvm: abacus.sink.CounterSink) configured for one counter store:
    rows are the layout's key fields, its measures, then the index date."""
    cassandra = settings.cassandra
    values = {
        "hosts": ",".join(cassandra.hosts), "port": cassandra.port,
        "local_dc": cassandra.local_dc or "", "username": cassandra.username or "",
        "password": cassandra.password.get_secret_value() if cassandra.password else "",
        "ssl": str(cassandra.ssl).lower(), "ssl_cafile": str(cassandra.ssl_cafile or ""),
        "request_timeout_ms": int(cassandra.request_timeout_s * 1000),
        "update": layout.update, "index": layout.index, "keys": len(layout.keys),
        "measures": len(layout.measures), "partition_keys": layout.partition_keys,
        "index_fields": ",".join(map(str, layout.index_fields)),
        "shard_fields": ",".join(map(str, layout.shard_fields)), "shards": layout.shards,
        "interval_ms": spec.window_ms, "concurrency": cassandra.write_concurrency,
        "batch_partitions": cassandra.batch_partitions, "batch_rows": BATCH_ROWS,
        "attempts": _SINK_ATTEMPTS, "backoff_ms": _SINK_BACKOFF_MS,
        "progress_dir": spec.progress_dir,
    }
    jvm = get_gateway().jvm
    conf = jvm.java.util.HashMap()
    for key, value in values.items():
        conf.put(key, str(value))
    return jvm.abacus.sink.CounterSink(conf)


def checkpoint_root(settings: Settings, name: str) -> Path:
    """Absolute checkpoint directory of one job name (Flink adds <job id>/chk-<n>)."""
    return settings.flink.checkpoint_dir.expanduser().resolve() / name


def latest_checkpoint(settings: Settings, name: str) -> Path | None:
    """The newest complete retained checkpoint or savepoint of a job name, if any."""
    root = checkpoint_root(settings, name)
    found = [p.parent for p in [*root.glob("*/chk-*/_metadata"),
                                *root.glob("savepoints/savepoint-*/_metadata")]]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None

