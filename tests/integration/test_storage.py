"""The schema and the count stores on a real Cassandra: idempotent DDL, counter and bigint
writes, the per-date enumeration compare relies on, and the serving query."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from counting import AccountCount, AccountKey, CustomerCount, CustomerKey
from settings.model import Settings
from storage import (
    ACCOUNT_COLUMNS,
    CUSTOMER_COLUMNS,
    CounterStore,
    Prepared,
    Request,
    connect,
    statements,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store_env(settings: Settings, services_up: object) -> Iterator[tuple[Settings, Prepared]]:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    cass = settings.cassandra.model_copy(update={"keyspace_prefix": prefix})
    isolated = settings.model_copy(update={"cassandra": cass})
    session = connect(cass)
    for cql in statements(cass):
        session.execute(cql, timeout=120)
    yield isolated, Prepared(session)
    for name in ("legacy", "shadow", "serving", "m2", "ops"):
        session.execute(f"DROP KEYSPACE IF EXISTS {prefix}abacus_{name}", timeout=120)
    session.cluster.shutdown()


def test_schema_apply_is_idempotent(store_env: tuple[Settings, Prepared]) -> None:
    settings, prepared = store_env
    for cql in statements(settings.cassandra):  # a second time: nothing fails, nothing changes
        prepared.session.execute(cql, timeout=120)
    tables = {
        row.table_name
        for row in prepared.session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
            (settings.cassandra.keyspace("abacus_ops"),),
        )
    }
    assert {"audits", "cutover_stage", "cutover_transitions"} <= tables


def key(company: str, res: str, bucket: str, facet: str = "", value: str = "") -> AccountKey:
    return AccountKey(company, "opened", res, bucket, facet, value)


def test_counter_store_adds_and_reads_a_date(store_env: tuple[Settings, Prepared]) -> None:
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, "legacy")
    rows = [
        (key("C1", "hour", "2025-12-01T00"), 2, 1),
        (key("C1", "hour", "2025-12-01T23", "ip", ""), 1, 1),
        (key("C1", "day", "2025-12-01"), 3, 2),
        (key("C1", "month", "2025-12"), 3, 2),
        (key("C1", "hour", "2025-12-02T00"), 5, 5),  # the next date: not read
        (key("C1", "day", "2025-12-02"), 5, 5),
        (key("C2", "hour", "2025-11-30T23"), 7, 7),  # the previous date
        (key("C2", "day", "2025-11-30"), 7, 7),
    ]
    store.write_account(rows)
    store.write_account(rows[:1])  # counters add
    got = set(store.read_date("2025-12-01", "account"))
    assert got == {
        AccountCount(key("C1", "hour", "2025-12-01T00"), 4, 2),
        AccountCount(key("C1", "hour", "2025-12-01T23", "ip", ""), 1, 1),
        AccountCount(key("C1", "day", "2025-12-01"), 3, 2),
    }
    with_month = set(store.read_date("2025-12-01", "account", include_month=True))
    assert AccountCount(key("C1", "month", "2025-12"), 3, 2) in with_month
    assert {c.key.company_id for c in store.read_date("2025-11-30", "account")} == {"C2"}


def test_bigint_store_sets_final_values(store_env: tuple[Settings, Prepared]) -> None:
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, "m2")
    k = key("C9", "hour", "2025-12-03T10")
    store.write_account([(k, 5, 2)])
    store.write_account([(k, 6, 3)])  # idempotent final counts: overwrite, not add
    store.write_account([(key("C9", "day", "2025-12-03"), 6, 3)])
    assert set(store.read_date("2025-12-03", "account")) == {
        AccountCount(k, 6, 3),
        AccountCount(key("C9", "day", "2025-12-03"), 6, 3),
    }


def test_customer_counters_by_date(store_env: tuple[Settings, Prepared]) -> None:
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, "shadow")
    ck = [CustomerKey("C1", f"U{i}", "opened", "hour", "2025-12-05T0" + str(i)) for i in range(3)]
    day = CustomerKey("C1", "U0", "opened", "day", "2025-12-05")
    store.write_customer([(k, 1) for k in ck] + [(day, 1)])
    store.write_customer([(ck[0], 2)])
    got = set(store.read_date("2025-12-05", "customer"))
    assert got == {
        CustomerCount(ck[0], 3),
        CustomerCount(ck[1], 1),
        CustomerCount(ck[2], 1),
        CustomerCount(day, 1),
    }
    assert set(store.keys_of_date("2025-12-05", "customer")) == {
        ("C1", f"U{i}", "opened") for i in range(3)
    }


def test_serving_query_reads_a_range_across_months(store_env: tuple[Settings, Prepared]) -> None:
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, "serving")
    days = ["2025-12-30", "2025-12-31", "2026-01-01", "2026-01-02"]
    store.write_account([(key("C3", "day", d), i + 1, 1) for i, d in enumerate(days)])
    store.write_account([(key("C3", "hour", "2025-12-31T05"), 9, 9)])  # other resolution
    got = [
        c.count for c in store.read_account_range("C3", "opened", "day", "2025-12-31", "2026-01-01")
    ]
    assert sorted(got) == [2, 3]


@pytest.mark.parametrize("store_name", ["shadow", "m2"])
def test_batches_spanning_partitions_write_every_row_once(
    store_env: tuple[Settings, Prepared], store_name: str
) -> None:
    """Hundreds of small partitions (customers) and a few large ones (account keys): the
    writer packs them into multi-partition batches; every row must land exactly once."""
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, store_name)
    date = "2025-10-07" if store_name == "shadow" else "2025-10-08"
    customer = [
        (CustomerKey(f"B{i % 7}", f"cust{i}", "opened", res, bucket), i + 1)
        for i in range(400)
        for res, bucket in (("hour", f"{date}T{i % 24:02d}"), ("day", date))
    ]
    account = [
        (key(f"B{i % 3}", "hour", f"{date}T{i % 24:02d}", "campaign", f"v{i}"), i + 1, i % 5)
        for i in range(500)
    ]
    store.write_customer(customer)
    store.write_account(account)
    got_customer = {c.key: c.count for c in store.read_date(date, "customer")}
    assert got_customer == dict(customer)
    got_account = {c.key: (c.count, c.uniques) for c in store.read_date(date, "account")}
    assert got_account == {k: (n, u) for k, n, u in account}


def test_read_requests_return_the_documented_rows(store_env: tuple[Settings, Prepared]) -> None:
    """The public read API compare runs concurrently: rows are `*_COLUMNS` tuples in
    clustering order, the month bucket (with include_month) first, and a customer request
    reads every (customer, statistic) pair of its customers and statistics at once."""
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, "serving")
    date = "2026-02-03"
    store.write_account(
        [
            (key("R1", "hour", f"{date}T05"), 2, 1),
            (key("R1", "day", date), 2, 1),
            (key("R1", "month", "2026-02"), 9, 4),
            (key("R1", "hour", "2026-02-04T00"), 1, 1),
        ]
    )
    cust = [
        CustomerKey("R1", f"U{i}", stat, "hour", f"{date}T0{i}")
        for i in range(3)
        for stat in ("opened", "clicked")
    ]
    store.write_customer(
        [(k, 1) for k in cust] + [(CustomerKey("R1", "U0", "opened", "month", "2026-02"), 5)]
    )

    def rows(requests: list[Request]) -> list[tuple[object, ...]]:
        return [
            tuple(r)
            for statement, params in requests
            for r in prepared.session.execute(statement, params)
        ]

    assert ACCOUNT_COLUMNS == ("bucket", "resolution", "facet", "value", "count", "uniques")
    assert rows(store.account_requests("R1", "opened", date, include_month=True)) == [
        ("2026-02", "month", "", "", 9, 4),
        (date, "day", "", "", 2, 1),
        (f"{date}T05", "hour", "", "", 2, 1),
    ]
    assert rows(store.account_requests("R1", "opened", date)) == [
        (date, "day", "", "", 2, 1),
        (f"{date}T05", "hour", "", "", 2, 1),
    ]
    assert CUSTOMER_COLUMNS == ("customer_id", "statistic_id", "bucket", "resolution", "count")
    got = rows(store.customer_requests("R1", ["U0", "U2"], ["clicked", "opened"], date, True))
    assert sorted(got) == sorted(
        [("U0", "opened", "2026-02", "month", 5)]
        + [
            (k.customer_id, k.statistic_id, k.bucket, "hour", 1)
            for k in cust
            if k.customer_id != "U1"
        ]
    )
    assert {r[0] for r in rows(store.customer_requests("R1", ["U1"], ["opened"], date))} == {"U1"}
    indexed = {
        tuple(r)
        for statement, params in store.index_requests(date, "customer")
        for r in prepared.session.execute(statement, params)
    }
    assert indexed == {("R1", f"U{i}", s) for i in range(3) for s in ("opened", "clicked")}


def test_key_requests_read_only_those_counters(store_env: tuple[Settings, Prepared]) -> None:
    settings, prepared = store_env
    store = CounterStore(prepared, settings.cassandra, "legacy")
    date = "2026-03-04"
    hours = [key("K1", "hour", f"{date}T0{h}") for h in range(4)]
    month = key("K1", "month", "2026-03")
    store.write_account([(k, 1, 1) for k in [*hours, month]])
    ck = [CustomerKey("K1", "U1", s, "hour", f"{date}T01") for s in ("opened", "clicked")]
    store.write_customer([(k, 2) for k in ck])
    wanted = [hours[1], hours[3], month, key("K1", "hour", f"{date}T09"), ck[1]]
    got = sorted(
        tuple(r)
        for statement, params in store.key_requests(wanted)
        for r in prepared.session.execute(statement, params)
    )
    assert got == sorted(
        [
            (f"{date}T01", "hour", "", "", 1, 1),
            (f"{date}T03", "hour", "", "", 1, 1),
            ("2026-03", "month", "", "", 1, 1),
            ("U1", "clicked", f"{date}T01", "hour", 2),
        ]
    )
