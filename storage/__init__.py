"""Where counts live in Cassandra: the schema, sessions, and each count store's reads and
writes. Shared by legacy, the Abacus jobs and compare, so that none of them writes CQL of
its own for the counter tables."""

from storage.cassandra import Prepared, connect
from storage.counters import (
    ACCOUNT_COLUMNS,
    CUSTOMER_COLUMNS,
    CounterStore,
    Request,
    date_slice,
    date_slices,
    period_of,
    shard_of,
)
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
    "ACCOUNT_COLUMNS",
    "CUSTOMER_COLUMNS",
    "OPS",
    "SHARDS",
    "STORES",
    "CounterStore",
    "Prepared",
    "Request",
    "Store",
    "apply_schema",
    "connect",
    "date_slice",
    "date_slices",
    "keyspace_of",
    "period_of",
    "shard_of",
    "statements",
]
