"""The rows a count store's reads return (`CounterStore.*_requests`), by named column.

Reads return plain tuples, cheap to hash and to compare whole (an audit compares every
counter of a date that way); their columns are `ACCOUNT_COLUMNS` and `CUSTOMER_COLUMNS`,
and every reader finds a column at the position named here, never at a number of its own.
At both levels a row starts with the counter's key within its unit (the ids of one entry
of the date index: (company, statistic) or (company, customer, statistic)), `KEY_WIDTH`
columns, followed by the count; an account row ends with the uniques.
"""

from __future__ import annotations

from typing import Any

from counting import AccountCount, AccountKey, CustomerCount, CustomerKey

ACCOUNT_COLUMNS = ("bucket", "resolution", "facet", "value", "count", "uniques")
CUSTOMER_COLUMNS = ("customer_id", "statistic_id", "bucket", "resolution", "count")
Row = tuple[Any, ...]

KEY_WIDTH = 4  # row[:KEY_WIDTH]: the key columns, at both levels
COUNT = ACCOUNT_COLUMNS.index("count")  # at both levels (CUSTOMER_COLUMNS too)
UNIQUES = ACCOUNT_COLUMNS.index("uniques")  # account rows only
A_BUCKET, A_RESOLUTION, A_FACET, A_VALUE = (
    ACCOUNT_COLUMNS.index(c) for c in ("bucket", "resolution", "facet", "value")
)
C_CUSTOMER, C_STATISTIC, C_BUCKET, C_RESOLUTION = (
    CUSTOMER_COLUMNS.index(c) for c in ("customer_id", "statistic_id", "bucket", "resolution")
)


def row_key(key: AccountKey | CustomerKey) -> tuple[str, ...]:
    """The key columns of the key's row (`row_of`'s first KEY_WIDTH)."""
    if isinstance(key, AccountKey):
        return (key.bucket, key.resolution, key.facet, key.value)
    return (key.customer_id, key.statistic_id, key.bucket, key.resolution)


def row_of(counted: AccountCount | CustomerCount) -> Row:
    """A counter as a store read returns it."""
    if isinstance(counted, AccountCount):
        a = counted.key
        return (a.bucket, a.resolution, a.facet, a.value, counted.count, counted.uniques)
    c = counted.key
    return (c.customer_id, c.statistic_id, c.bucket, c.resolution, counted.count)


def key_of_row(level: str, ids: tuple[str, ...], row: Row) -> AccountKey | CustomerKey:
    """The counter key of a row of the index entry `ids` at `level`."""
    if level == "account":
        company, statistic = ids
        return AccountKey(
            company, statistic, row[A_RESOLUTION], row[A_BUCKET], row[A_FACET], row[A_VALUE]
        )
    return CustomerKey(ids[0], row[C_CUSTOMER], row[C_STATISTIC], row[C_RESOLUTION], row[C_BUCKET])


def counted_of_row(level: str, ids: tuple[str, ...], row: Row) -> AccountCount | CustomerCount:
    """A row of the index entry `ids` at `level` as counting's type (absent values are 0)."""
    key = key_of_row(level, ids, row)
    if isinstance(key, AccountKey):
        return AccountCount(key, row[COUNT] or 0, row[UNIQUES] or 0)
    return CustomerCount(key, row[COUNT] or 0)


def row_value(row: Row) -> tuple[int, int]:
    """(count, uniques) of a row; uniques is 0 at customer level."""
    return (row[COUNT] or 0, (row[UNIQUES] or 0) if len(row) > UNIQUES else 0)
