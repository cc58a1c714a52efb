"""The two milestone-1 jobs as one Flink graph each: DataStream for Kafka and Python, SQL for
every piece of per-record state (in the JVM, RocksDB-backed).

    KafkaSource (raw bytes)
      -> Validate (Python, counting.parse_event) --rejected--> DeadLetter (Kafka DLQ)
      -> SQL: keep-first by event_id (ROW_NUMBER ... = 1, state TTL)
      -> fan-out (Python table function: counting.account_keys / customer_keys)
      -> count increments of hour keys only (the sink rolls them up to day and month)
      -> [statistic] keep-first by uniqueness_id(key, customer): the unique increments, at
         every resolution (uniques do not roll up)
      -> TUMBLE processing-time window (window_ms): SUM increments per counter key
      -> TUMBLE (flush_ms) over the first window's time: ARRAY_AGG of a window's counters per
         shard, so that one record is one batch for the sink
      -> WriteCounts (Python): hour counts added to their day and month, then
         storage.CounterStore: count = count + d, uniques = uniques + u

Processing-time windows only batch writes: the buckets come from counting's fan-out.
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
from pyflink.table import DataTypes, Schema, StreamTableEnvironment
from pyflink.table.udf import udtf

from abacus.operators import AccountFanOut, CustomerFanOut, DeadLetter, Validate, WriteCounts
from settings import Settings

Kind = Literal["statistic", "customer"]
KINDS: tuple[Kind, ...] = ("statistic", "customer")
TARGETS: tuple[str, ...] = ("shadow", "serving")

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
_REJECTED = Types.ROW([_BYTES, Types.STRING(), Types.STRING(), Types.STRING()])
_EVENT_FIELDS = ["event_id", "company_id", "customer_id", "statistic_id", "ts", "tz", "facets"]
_EVENT = Types.ROW_NAMED(_EVENT_FIELDS,
                         [Types.STRING()] * 4 + [Types.DOUBLE()] + [Types.STRING()] * 2)

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
        schema.column(field, DataTypes.DOUBLE() if field == "ts" else DataTypes.STRING())
    tenv.create_temporary_view("events", tenv.from_data_stream(
        valid, schema.column_by_expression("pt", "PROCTIME()").build()))
    tenv.execute_sql(
        "CREATE TEMPORARY VIEW firsts AS SELECT * FROM (SELECT *, ROW_NUMBER() OVER "
        "(PARTITION BY event_id ORDER BY pt) AS rn FROM events) WHERE rn = 1")
    args = "event_id, company_id, customer_id, statistic_id, ts, tz, facets"
    if spec.kind == "statistic":
        fanout = udtf(AccountFanOut(spec.progress_dir), result_types=[DataTypes.STRING()] * 7)
        key = _ACCOUNT_KEY
        columns = ", ".join(f"f{i} AS {c}" for i, c in enumerate([*key, "uid"]))
    else:
        fanout = udtf(CustomerFanOut(spec.progress_dir), result_types=[DataTypes.STRING()] * 5)
        key = _CUSTOMER_KEY
        columns = ", ".join(f"f{i} AS {c}" for i, c in enumerate(key))
    tenv.create_temporary_function("fan_out", fanout)
    tenv.execute_sql(f"CREATE TEMPORARY VIEW fanned AS SELECT {columns}, pt "
                     f"FROM firsts, LATERAL TABLE(fan_out({args}))")
    keys = ", ".join(key)
    if spec.kind == "statistic":
        tenv.execute_sql(
            f"CREATE TEMPORARY VIEW increments AS "
            f"SELECT {keys}, 1 AS c, 0 AS u, pt FROM fanned WHERE resolution = 'hour' UNION ALL "
            f"SELECT {keys}, 0 AS c, 1 AS u, pt FROM (SELECT *, ROW_NUMBER() OVER "
            f"(PARTITION BY uid ORDER BY pt) AS rn FROM fanned) WHERE rn = 1")
        sums, values = "SUM(c) AS c, SUM(u) AS u", f"{keys}, c, u"
    else:
        tenv.execute_sql(f"CREATE TEMPORARY VIEW increments AS SELECT {keys}, 1 AS c, pt "
                         f"FROM fanned")
        sums, values = "SUM(c) AS c", f"{keys}, c"
    tenv.execute_sql(
        f"CREATE TEMPORARY VIEW windowed AS SELECT window_end AS w_end, window_time AS wt, "
        f"{keys}, {sums} FROM TABLE(TUMBLE(TABLE increments, DESCRIPTOR(pt), "
        f"INTERVAL '{spec.window_ms / 1000}' SECOND)) "
        f"GROUP BY window_start, window_end, window_time, {keys}")
    # one array per column: ARRAY_AGG(ROW(...)) repeats one reused row object (Flink 2.2)
    arrays = ", ".join(f"ARRAY_AGG({c}) AS a{i}" for i, c in enumerate(values.split(", ")))
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

