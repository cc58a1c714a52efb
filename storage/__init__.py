"""Where counts live in Cassandra: the schema, sessions, and each count store's reads and
writes. Shared by legacy, the Abacus jobs and compare, so that none of them writes CQL of
its own for the counter tables."""

from storage.cassandra import Prepared, connect
from storage.counters import (
    CounterStore,
    Request,
    date_slice,
    date_slices,
    period_of,
    shard_of,
)
from storage.rows import (
    ACCOUNT_COLUMNS,
    CUSTOMER_COLUMNS,
    KEY_WIDTH,
    Row,
    counted_of_row,
    key_of_row,
    row_key,
    row_of,
    row_value,
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
    "KEY_WIDTH",
    "OPS",
    "SHARDS",
    "STORES",
    "CounterStore",
    "Prepared",
    "Request",
    "Row",
    "Store",
    "apply_schema",
    "connect",
    "counted_of_row",
    "date_slice",
    "date_slices",
    "key_of_row",
    "keyspace_of",
    "period_of",
    "row_key",
    "row_of",
    "row_value",
    "shard_of",
    "statements",
]
