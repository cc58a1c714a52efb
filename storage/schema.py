"""The Cassandra schema: one keyspace per count store, plus ops (audits, cutover).

Table design (README, "Schema"):
- Counters are partitioned by (company, statistic, period) at account level and
  (company, customer, period) at customer level, where period is the bucket's month for
  hour and day buckets and its year for month buckets. The serving query "company X,
  statistic Y, resolution R, buckets in a range" reads one partition per month spanned.
- Buckets sort as text: `D` < `DT00` < ... < `DT23` < the next day, so one clustering slice
  `D <= bucket < D + "U"` (`counting.date_label_range`) returns a date's day and hour
  counters together.
- `*_keys_by_date` index, per local date of the hour bucket, the (company, statistic) and
  (company, customer, statistic) each writer touched, spread over SHARDS partitions, so
  `compare --date D` enumerates a date's counters in time proportional to that date's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from settings import CassandraSettings

SHARDS = 8

Kind = Literal["counter", "bigint"]


@dataclass(frozen=True, slots=True)
class Store:
    """A count store: a logical name, its keyspace, and how counts are written. A store
    may be another store's tables under a second name (`keyspace_store`)."""

    name: str
    kind: Kind
    description: str
    keyspace_store: str | None = None  # whose keyspace it is (default: its own name)

    @property
    def owner(self) -> str:
        return self.keyspace_store or self.name


STORES: dict[str, Store] = {
    s.name: s
    for s in (
        Store("legacy", "counter", "the legacy pipeline's counters (Big Bertha + Celery)"),
        Store("shadow", "counter", "Abacus milestone 1 in shadow mode"),
        # milestone 1 continues legacy's counter tables: readers never move, history stays
        # whole. `serving` names the tables the read path reads; through m1 those are
        # legacy's (written by legacy before the hand-over, by Abacus after it)
        Store("serving", "counter", "the serving counter tables (legacy's)", "legacy"),
        Store("m2", "bigint", "Abacus milestone 2 final counts (bigint)"),
    )
}
OPS = "ops"


def keyspace_of(settings: CassandraSettings, name: str) -> str:
    """The keyspace of a store (or of `ops`): a store named for another's tables resolves
    to that store's keyspace."""
    store = STORES.get(name)
    return settings.keyspace(f"abacus_{store.owner if store else name}")


def _replication(settings: CassandraSettings) -> str:
    """The replication map as CQL text: checked again here (a settings copy made with
    `model_copy(update=...)` skips validation), since it is pasted, not bound."""
    from settings.names import check_replication

    items = ", ".join(f"'{k}': '{v}'" for k, v in check_replication(settings.replication).items())
    return "{" + items + "}"


def counter_tables(kind: Kind) -> list[str]:
    """CREATE TABLE statements of a count store (`{ks}` stands for its keyspace)."""
    count_type = "counter" if kind == "counter" else "bigint"
    return [
        f"""CREATE TABLE IF NOT EXISTS {{ks}}.account_counts (
            company_id text, statistic_id text, period text,
            bucket text, resolution text, facet text, value text,
            count {count_type}, uniques {count_type},
            PRIMARY KEY ((company_id, statistic_id, period), bucket, resolution, facet, value))""",
        f"""CREATE TABLE IF NOT EXISTS {{ks}}.customer_counts (
            company_id text, customer_id text, period text,
            statistic_id text, bucket text, resolution text,
            count {count_type},
            PRIMARY KEY ((company_id, customer_id, period), statistic_id, bucket, resolution))""",
        """CREATE TABLE IF NOT EXISTS {ks}.account_keys_by_date (
            date text, shard int, company_id text, statistic_id text,
            PRIMARY KEY ((date, shard), company_id, statistic_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.customer_keys_by_date (
            date text, shard int, company_id text, customer_id text, statistic_id text,
            PRIMARY KEY ((date, shard), company_id, customer_id, statistic_id))""",
    ]


OPS_TABLES: list[str] = [
    """CREATE TABLE IF NOT EXISTS {ks}.audits (
        audit_id text PRIMARY KEY, date text, left_store text, right_store text, truth text,
        params text, summary text, state text, outcome text,
        started_at timestamp, ended_at timestamp)""",
    """CREATE TABLE IF NOT EXISTS {ks}.audits_by_date (
        date text, started_at timestamp, audit_id text, left_store text, right_store text,
        outcome text,
        PRIMARY KEY ((date), started_at, audit_id)) WITH CLUSTERING ORDER BY (started_at DESC,
        audit_id ASC)""",
    # the cutover's stage: one row per level ("pipeline": the whole pipeline moves), changed
    # only by compare-and-set on `version` (cutover.state)
    """CREATE TABLE IF NOT EXISTS {ks}.cutover_stage (
        level text PRIMARY KEY, stage text, version int, epoch int, since timestamp,
        transition text, updated_at timestamp)""",
    # every transition, newest first: who ran it where, from, to, the audits that justified
    # it, forced or not and why, and how it ended
    """CREATE TABLE IF NOT EXISTS {ks}.cutover_transitions (
        level text, at timeuuid, kind text, from_stage text, to_stage text, who text,
        host text, audit_ids list<text>, forced boolean, reason text, state text,
        steps text, ended_at timestamp,
        PRIMARY KEY ((level), at)) WITH CLUSTERING ORDER BY (at DESC)""",
    # the bridge's mirror overflow per event date (storage.overflow)
    """CREATE TABLE IF NOT EXISTS {ks}.mirror_overflow (
        date text PRIMARY KEY, messages counter, redelivered counter)""",
]


def apply_schema(settings: CassandraSettings, names: list[str] | None = None) -> int:
    """Create the keyspaces and tables (of `names`, default all) that are missing; returns
    the number of statements run. Existing tables are left as they are."""
    from storage.cassandra import connect

    keyspaces = None if names is None else {keyspace_of(settings, n) for n in names}
    todo = [
        cql for cql in statements(settings) if keyspaces is None or _keyspace_in(cql) in keyspaces
    ]
    session = connect(settings)
    try:
        for cql in todo:
            session.execute(cql, timeout=120)
    finally:
        session.cluster.shutdown()
    return len(todo)


def _keyspace_in(cql: str) -> str:
    words = cql.split()
    if words[:2] == ["CREATE", "KEYSPACE"]:
        return words[5]  # CREATE KEYSPACE IF NOT EXISTS <ks>
    return words[5].split(".")[0]  # CREATE TABLE IF NOT EXISTS <ks>.<table>


def statements(settings: CassandraSettings) -> list[str]:
    """Every DDL statement, idempotent (IF NOT EXISTS), in the order to run them."""
    out: list[str] = []
    for name in [*(n for n, st in STORES.items() if st.keyspace_store is None), OPS]:
        ks = keyspace_of(settings, name)
        out.append(
            f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {_replication(settings)}"
        )
        tables = OPS_TABLES if name == OPS else counter_tables(STORES[name].kind)
        out += [" ".join(t.format(ks=ks).split()) for t in tables]
    return out
