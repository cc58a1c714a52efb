"""storage.rows: the rows a store read returns, by named column, and back (no server)."""

from __future__ import annotations

from itertools import chain

from counting import AccountCount, Recount
from counting.corpus import tricky_events
from storage.rows import (
    ACCOUNT_COLUMNS,
    COUNT,
    CUSTOMER_COLUMNS,
    KEY_WIDTH,
    UNIQUES,
    counted_of_row,
    key_of_row,
    row_key,
    row_of,
    row_value,
)


def test_both_levels_start_with_the_key_then_the_count() -> None:
    assert ACCOUNT_COLUMNS.index("count") == CUSTOMER_COLUMNS.index("count") == COUNT
    assert COUNT == KEY_WIDTH and ACCOUNT_COLUMNS[UNIQUES] == "uniques"
    assert len(CUSTOMER_COLUMNS) == KEY_WIDTH + 1 and len(ACCOUNT_COLUMNS) == KEY_WIDTH + 2


def test_rows_name_their_columns_and_come_back_as_the_counters() -> None:
    recount = Recount()
    for event in tricky_events():
        recount.add_raw(event)
    counted = list(chain(recount.account(), recount.customer()))
    assert counted
    for c in counted:
        row = row_of(c)
        account = isinstance(c, AccountCount)
        columns = ACCOUNT_COLUMNS if account else CUSTOMER_COLUMNS
        named = dict(zip(columns, row, strict=True))
        for name, value in named.items():
            expected = getattr(c, name) if name in ("count", "uniques") else getattr(c.key, name)
            assert value == expected
        assert row[:KEY_WIDTH] == row_key(c.key)
        ids = (
            (c.key.company_id, c.key.statistic_id)
            if account
            else (c.key.company_id, c.key.customer_id, c.key.statistic_id)
        )
        level = "account" if account else "customer"
        assert key_of_row(level, ids, row) == c.key
        assert counted_of_row(level, ids, row) == c
        assert row_value(row) == (c.count, c.uniques if isinstance(c, AccountCount) else 0)


def test_absent_measures_read_as_zero() -> None:
    assert row_value(("h", "hour", "", "", None, None)) == (0, 0)
    assert row_value(("c", "s", "h", "hour", None)) == (0, 0)
