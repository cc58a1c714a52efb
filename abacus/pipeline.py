"""The two milestone-1 jobs as one Flink graph each: DataStream for Kafka and Python, SQL for
every piece of per-record state (in the JVM, RocksDB-backed).

    KafkaSource (raw bytes)
      -> Validate (Python, counting.parse_event) --rejected--> DeadLetter (Kafka DLQ)
         the event row carries the contract's bucket labels (counting.bucket_labels) and
         facet pairs (counting.account_facets)
      -> SQL: keep-first by event_id (ROW_NUMBER ... = 1, state TTL), counted(n) for drain
      -> count increments of hour keys only (the sink rolls them up to day and month)
      -> [statistic] fan-out: CROSS JOIN UNNEST of the facet pairs; keep-first by (key,
         customer) at hour, then day among the hour's firsts, then month among the day's:
         the unique increments at every resolution (uniques do not roll up)
      -> TUMBLE processing-time window (window_ms): SUM increments per counter key
      -> TUMBLE (flush_ms) over the first window's time: ARRAY_AGG of a window's counters per
         shard, so that one record is one batch for the sink
      -> WriteCounts (Python): hour counts added to their day and month, then
         storage.CounterStore: count = count + d, uniques = uniques + u

Processing-time windows only batch writes: the buckets come from counting's labels.
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
from pyflink.table.udf import udf

from abacus.operators import Counted, DeadLetter, Validate, WriteCounts
from counting import RESOLUTIONS
from settings import Settings

Kind = Literal["statistic", "customer"]
KINDS: tuple[Kind, ...] = ("statistic", "customer")
TARGETS: tuple[str, ...] = ("shadow", "serving")

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
_REJECTED = Types.ROW([_BYTES, Types.STRING(), Types.STRING(), Types.STRING()])
_EVENT_FIELDS = ["event_id", "company_id", "customer_id", "statistic_id",
                 *(f"b_{r}" for r in RESOLUTIONS), "facets", "facet_values"]
_EVENT = Types.ROW_NAMED(_EVENT_FIELDS, [Types.STRING()] * 7
                         + [Types.OBJECT_ARRAY(Types.STRING())] * 2)

_ACCOUNT_KEY = ["company_id", "statistic_id", "resolution", "bucket", "facet", "`value`"]
_CUSTOMER_KEY = ["company_id", "customer_id", "statistic_id", "resolution", "bucket"]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything that defines one job run (what the runner process is given)."""

    kind: Kind
    target: str
    name: str  # the job's name: state file, checkpoints, consumer group ("abacus-" + name)
    window_ms: int
    flush_ms: int
    dedup_ttl_s: int
    uniques_ttl_s: int
    shards: int
    progress_dir: str  # "" = no drain counters (remote cluster)
    run_started_ms: int

    @property
    def group_id(self) -> str:
        return f"abacus-{self.name}"

    @property
    def source(self) -> str:
        """The DLQ `source` header: which job dead-lettered the record."""
        return f"abacus-{self.kind}"

    @property
    def state_ttl_s(self) -> int:
        # SQL state TTL is one per job: the statistic job keeps its dedup state as long as its
        # uniqueness state (longer is only more exact); the customer job has dedup only.
        return max(self.dedup_ttl_s, self.uniques_ttl_s) if self.kind == "statistic" \
            else self.dedup_ttl_s


def _account_increments(tenv: StreamTableEnvironment) -> None:
    """The view `increments` of the statistic job: (account key, count, uniques, pt) rows,
    counts at hour resolution only (the sink rolls them up), uniques at every resolution."""
    columns = "company_id, statistic_id, customer_id, b_hour, b_day, b_month, facet, `value`"
    tenv.create_temporary_view("fanned", _computed_once(tenv, tenv.sql_query(
        f"SELECT {columns} FROM (SELECT firsts.*, f.name AS facet, facet_values[f.i] AS "
        "`value` FROM firsts CROSS JOIN UNNEST(facets) WITH ORDINALITY AS f(name, i))")))
    # Uniqueness, hour before day before month: a customer first at a day is first at its
    # hour too (a local hour lies in one local day, and a day in one month), so the day
    # check needs only the hour's first occurrences, the month only the day's.
    source = "fanned"
    for resolution in RESOLUTIONS:
        once = resolution != RESOLUTIONS[-1]  # read twice: by its uniques and the next
        firsts = (f"SELECT {columns}{'' if once else ', pt'} FROM (SELECT *, ROW_NUMBER() "
                  f"OVER (PARTITION BY company_id, statistic_id, facet, `value`, "
                  f"b_{resolution}, customer_id ORDER BY pt) AS rn FROM {source}) WHERE rn = 1")
        source = f"first_{resolution}"
        tenv.create_temporary_view(source, _computed_once(tenv, tenv.sql_query(firsts))
                                   if once else tenv.sql_query(firsts))

    def rows(resolution: str, c: int, u: int, source: str) -> str:
        return (f"SELECT company_id, statistic_id, {_text(resolution)} AS resolution, "
                f"b_{resolution} AS bucket, facet, `value`, {c} AS c, {u} AS u, pt "
                f"FROM {source}")

    tenv.execute_sql("CREATE TEMPORARY VIEW increments AS " + " UNION ALL ".join(
        [rows("hour", 1, 0, "fanned"), *(rows(r, 0, 1, f"first_{r}") for r in RESOLUTIONS)]))


def _computed_once(tenv: StreamTableEnvironment, table: Table) -> Table:
    """`table` through a DataStream and back, with a new processing-time column `pt`.

    A view read twice is planned twice: each reader prunes the columns it does not need, so
    the two plans differ and the planner does not reuse one for both, and every stateful
    operator in it (a uniqueness check) would run, and keep its state, twice. The planner
    cannot see through a DataStream, so this one is computed once.

    The stream carries Flink's internal RowData, so neither side converts a field (PyFlink's
    `to_data_stream` would make external Rows of Java Strings and back: a quarter of the
    statistic job's CPU, sink aside); PyFlink has no call for that, hence the Java API."""
    row_data = get_gateway().jvm.org.apache.flink.table.data.RowData._java_lang_class
    j_table = table._j_table
    j_stream = tenv._j_tenv.toDataStream(
        j_table, j_table.getResolvedSchema().toPhysicalRowDataType().bridgedTo(row_data))
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
    tenv.get_config().set("table.exec.state.ttl", f"{spec.state_ttl_s * 1000} ms")
    tenv.get_config().set("table.local-time-zone", "UTC")  # window ends as UTC wall clock

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
    increments = "3 * CARDINALITY(facets)" if spec.kind == "statistic" else "3"
    counted = ""
    if spec.progress_dir:
        tenv.create_temporary_function("counted", udf(
            Counted(spec.progress_dir), result_type=DataTypes.BOOLEAN()))
        counted = f" AND counted({increments})"
    tenv.execute_sql(
        "CREATE TEMPORARY VIEW firsts AS SELECT * FROM (SELECT *, ROW_NUMBER() OVER "
        f"(PARTITION BY event_id ORDER BY pt) AS rn FROM events) WHERE rn = 1{counted}")
    if spec.kind == "statistic":
        key, values = _ACCOUNT_KEY, [*_ACCOUNT_KEY, "c", "u"]
        _account_increments(tenv)
    else:
        key, values = _CUSTOMER_KEY, [*_CUSTOMER_KEY, "c"]
        tenv.execute_sql(
            "CREATE TEMPORARY VIEW increments AS SELECT company_id, customer_id, "
            f"statistic_id, {_text('hour')} AS resolution, b_hour AS bucket, 1 AS c, pt "
            "FROM firsts")
    sums = ", ".join(f"SUM({m}) AS {m}" for m in values[len(key):])
    keys = ", ".join(key)
    tenv.execute_sql(
        f"CREATE TEMPORARY VIEW windowed AS SELECT window_end AS w_end, window_time AS wt, "
        f"{keys}, {sums} FROM TABLE(TUMBLE(TABLE increments, DESCRIPTOR(pt), "
        f"INTERVAL '{spec.window_ms / 1000}' SECOND)) "
        f"GROUP BY window_start, window_end, window_time, {keys}")
    # one array per column: ARRAY_AGG(ROW(...)) repeats one reused row object (Flink 2.2)
    arrays = ", ".join(f"ARRAY_AGG({c}) AS a{i}" for i, c in enumerate(values))
    shard = f"MOD(HASH_CODE({key[0]} || {key[-1]}), {spec.shards})"
    batches = tenv.sql_query(
        f"SELECT CAST(TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', w_end) AS BIGINT) "
        f"* 1000 AS w_end_ms, "
        f"{arrays} "
        f"FROM TABLE(TUMBLE(TABLE windowed, DESCRIPTOR(wt), "
        f"INTERVAL '{spec.flush_ms / 1000}' SECOND)) "
        f"GROUP BY window_start, window_end, w_end, {shard}")
    level = "account" if spec.kind == "statistic" else "customer"
    (tenv.to_data_stream(batches)
     .map(WriteCounts(settings.cassandra, spec.target, level, spec.progress_dir,
                      spec.run_started_ms), output_type=Types.INT())
     .uid("write-counts").name(f"write-counts-{spec.target}"))


def checkpoint_root(settings: Settings, name: str) -> Path:
    """Absolute checkpoint directory of one job name (Flink adds <job id>/chk-<n>)."""
    return settings.flink.checkpoint_dir.expanduser().resolve() / name


def latest_checkpoint(settings: Settings, name: str) -> Path | None:
    """The newest complete retained checkpoint or savepoint of a job name, if any."""
    root = checkpoint_root(settings, name)
    found = [p.parent for p in [*root.glob("*/chk-*/_metadata"),
                                *root.glob("savepoints/savepoint-*/_metadata")]]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None

