"""Where counts live in Cassandra: the schema, sessions, and each count store's reads and
writes. Shared by legacy, the Abacus jobs and compare, so that none of them writes CQL of
its own for the counter tables."""

from storage.cassandra import Prepared, connect
from storage.counters import CounterStore, date_slice, period_of, shard_of
from storage.schema import (
    OPS,
    SHARDS,
    STORES,
    Store,
    apply_schema,
    keyspace_of,
    statements,
)

__all__ = [
    "OPS",
    "SHARDS",
    "STORES",
    "CounterStore",
    "Prepared",
    "Store",
    "apply_schema",
    "connect",
    "date_slice",
    "keyspace_of",
    "period_of",
    "shard_of",
    "statements",
]
