"""SEMANTICS.md §2-§4: facets, time buckets (DST folds and gaps, odd offsets), fan-out,
de-duplication and uniques, as case tables and properties."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counting import (
    AccountKey,
    CustomerKey,
    Event,
    account_keys,
    bucket_labels,
    customer_keys,
    facet_value,
    parse_event,
    recount,
)
from counting.corpus import tricky_events, tricky_lines
from counting.generate import GeneratorConfig, generate


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


BUCKETS = [
    # (UTC instant, zone, hour, day, month)
    ("2018-12-07T03:32:42", "UTC", "2018-12-07T03", "2018-12-07", "2018-12"),
    ("2018-12-07T03:32:42", "America/New_York", "2018-12-06T22", "2018-12-06", "2018-12"),
    # New York fall-back: 01:00-02:00 local happens twice, one bucket
    ("2025-11-02T05:00:00", "America/New_York", "2025-11-02T01", "2025-11-02", "2025-11"),
    ("2025-11-02T05:59:59", "America/New_York", "2025-11-02T01", "2025-11-02", "2025-11"),
    ("2025-11-02T06:00:00", "America/New_York", "2025-11-02T01", "2025-11-02", "2025-11"),
    ("2025-11-02T06:59:59", "America/New_York", "2025-11-02T01", "2025-11-02", "2025-11"),
    ("2025-11-02T07:00:00", "America/New_York", "2025-11-02T02", "2025-11-02", "2025-11"),
    # New York spring-forward: 02:xx is skipped
    ("2025-03-09T06:59:59", "America/New_York", "2025-03-09T01", "2025-03-09", "2025-03"),
    ("2025-03-09T07:00:00", "America/New_York", "2025-03-09T03", "2025-03-09", "2025-03"),
    # Berlin fall-back and spring-forward
    ("2025-10-26T00:30:00", "Europe/Berlin", "2025-10-26T02", "2025-10-26", "2025-10"),
    ("2025-10-26T01:30:00", "Europe/Berlin", "2025-10-26T02", "2025-10-26", "2025-10"),
    ("2025-03-30T00:59:59", "Europe/Berlin", "2025-03-30T01", "2025-03-30", "2025-03"),
    ("2025-03-30T01:00:00", "Europe/Berlin", "2025-03-30T03", "2025-03-30", "2025-03"),
    # Lord Howe: a half-hour DST shift; 01:30-02:00 local happens twice
    ("2025-04-05T14:45:00", "Australia/Lord_Howe", "2025-04-06T01", "2025-04-06", "2025-04"),
    ("2025-04-05T15:15:00", "Australia/Lord_Howe", "2025-04-06T01", "2025-04-06", "2025-04"),
    # half-hour and 45-minute zones, across day, month and year boundaries
    ("2025-12-31T18:29:59", "Asia/Kolkata", "2025-12-31T23", "2025-12-31", "2025-12"),
    ("2025-12-31T18:30:00", "Asia/Kolkata", "2026-01-01T00", "2026-01-01", "2026-01"),
    ("2025-06-30T18:14:59", "Asia/Kathmandu", "2025-06-30T23", "2025-06-30", "2025-06"),
    ("2025-06-30T18:15:00", "Asia/Kathmandu", "2025-07-01T00", "2025-07-01", "2025-07"),
    ("2025-01-31T15:14:59", "Australia/Eucla", "2025-01-31T23", "2025-01-31", "2025-01"),
    ("2025-01-31T15:15:00", "Australia/Eucla", "2025-02-01T00", "2025-02-01", "2025-02"),
    ("2025-06-30T11:15:00", "Pacific/Chatham", "2025-07-01T00", "2025-07-01", "2025-07"),
    ("2025-02-01T04:30:00", "America/New_York", "2025-01-31T23", "2025-01-31", "2025-01"),
]


@pytest.mark.parametrize(("iso", "zone", "hour", "day", "month"), BUCKETS)
def test_bucket_labels(iso: str, zone: str, hour: str, day: str, month: str) -> None:
    assert bucket_labels(ts(iso), zone) == (hour, day, month)


def test_fractional_second_never_rounds_into_the_next_hour() -> None:
    assert bucket_labels(ts("2018-12-07T03:59:59") + 0.9995, "UTC")[0] == "2018-12-07T03"


@settings(max_examples=300, deadline=None)
@given(
    second=st.integers(min_value=946684800, max_value=4102444799),
    frac=st.floats(min_value=0, max_value=0.999),
    zone=st.sampled_from(
        [
            "UTC",
            "America/New_York",
            "Europe/Berlin",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "America/St_Johns",
            "Africa/Casablanca",
        ]
    ),
)
def test_a_bucket_contains_its_timestamp(second: int, frac: float, zone: str) -> None:
    hour, day, month = bucket_labels(second + frac, zone)
    local = datetime.fromtimestamp(second, ZoneInfo(zone))
    assert hour == local.strftime("%Y-%m-%dT%H")
    assert day == hour[:10] and month == hour[:7]


FACETS = [
    ("s", "s"),
    ("", ""),
    ("x" * 256, "x" * 256),
    ("x" * 257, None),
    ("café ☕", "café ☕"),
    (True, "true"),
    (False, "false"),
    (3, "3"),
    (-7, "-7"),
    (0, "0"),
    (10**20, "100000000000000000000"),
    (12.5, "12.5"),
    (2.0, "2.0"),
    (1e-07, "1e-07"),
    (1e16, "1e+16"),
    (0.1, "0.1"),
    (None, None),
    ([1], None),
    ({"a": 1}, None),
    ([], None),
]


@pytest.mark.parametrize(("value", "text"), FACETS)
def test_facet_value(value: object, text: str | None) -> None:
    assert facet_value(value) == text


def test_facets_from_json_keep_text_of_every_kind() -> None:
    raw = (
        '{"event_id":"e","company_id":"c","customer_id":"u","statistic_id":"s",'
        '"timestamp":1544153562,"properties":{"ip":"","b":true,"i":3,"f":12.50,'
        '"n":null,"l":[1],"o":{},"e":1E2}}'
    )
    event = parse_event(raw)
    assert isinstance(event, Event)
    assert dict(event.facets) == {"ip": "", "b": "true", "i": "3", "f": "12.5", "e": "100.0"}


def seed_event(**props: object) -> Event:
    event = parse_event(
        json.dumps(
            {
                "event_id": "e",
                "company_id": "COM123",
                "customer_id": "CUS123",
                "statistic_id": "STA123",
                "timestamp": 1544153562,
                "properties": props,
            }
        )
    )
    assert isinstance(event, Event)
    return event


def test_fan_out_of_the_seed_example() -> None:
    event = seed_event(message_id="MSG123", ip="", browser="Safari 12.0.1", type="open")
    keys = account_keys(event)
    assert len(keys) == 3 * (1 + 4)
    assert AccountKey("COM123", "STA123", "day", "2018-12-07", "", "") in keys
    assert AccountKey("COM123", "STA123", "hour", "2018-12-07T03", "ip", "") in keys
    assert AccountKey("COM123", "STA123", "month", "2018-12", "browser", "Safari 12.0.1") in keys
    assert customer_keys(event) == [
        CustomerKey("COM123", "CUS123", "STA123", "hour", "2018-12-07T03"),
        CustomerKey("COM123", "CUS123", "STA123", "day", "2018-12-07"),
        CustomerKey("COM123", "CUS123", "STA123", "month", "2018-12"),
    ]


def naive_counts(
    lines: list[str],
) -> tuple[dict[tuple[str, ...], tuple[int, int]], Counter[tuple[str, ...]]]:
    """SEMANTICS §4 straight from its text: for comparison with the optimised recount."""
    seen: set[str] = set()
    counts: Counter[tuple[str, ...]] = Counter()
    customers: dict[tuple[str, ...], set[str]] = {}
    ccounts: Counter[tuple[str, ...]] = Counter()
    for line in lines:
        event = parse_event(line)
        if not isinstance(event, Event) or event.event_id in seen:
            continue
        seen.add(event.event_id)
        for key in account_keys(event):
            counts[tuple(key)] += 1
            customers.setdefault(tuple(key), set()).add(event.customer_id)
        for ckey in customer_keys(event):
            ccounts[tuple(ckey)] += 1
    return {k: (n, len(customers[k])) for k, n in counts.items()}, ccounts


def recount_counts(
    lines: list[str],
) -> tuple[dict[tuple[str, ...], tuple[int, int]], Counter[tuple[str, ...]]]:
    result = recount(lines)
    account = {tuple(c.key): (c.count, c.uniques) for c in result.account()}
    customer = Counter({tuple(c.key): c.count for c in result.customer()})
    return account, customer


def test_recount_of_the_tricky_corpus_equals_the_naive_definition() -> None:
    lines = tricky_lines()
    assert recount_counts(lines) == naive_counts(lines)


def test_recount_of_generated_events_equals_the_naive_definition() -> None:
    config = GeneratorConfig(
        n=3000,
        seed=5,
        companies=7,
        customers=300,
        duplicate_share=0.05,
        late_share=0.1,
        timezones=("UTC", "Asia/Kathmandu", "America/New_York"),
    )
    lines = [json.dumps(e) for e in generate(config)]
    assert recount_counts(lines) == naive_counts(lines)


def test_duplicates_count_nowhere_and_the_first_delivery_wins() -> None:
    events = tricky_events()
    result = recount([json.dumps(e) for e in events])
    assert result.events == len({e["event_id"] for e in events})
    assert result.duplicates == len(events) - result.events
    # the redelivery of tricky-10-0 with another customer must not be counted
    customers = {c.key.customer_id for c in result.customer()}
    assert "CUS-OTHER" not in customers


def test_uniques_count_distinct_customers() -> None:
    base = {
        "company_id": "C",
        "statistic_id": "S",
        "timestamp": 1544153562,
        "properties": {"k": "v"},
    }
    lines = [
        json.dumps({**base, "event_id": f"e{i}", "customer_id": cust})
        for i, cust in enumerate(["a", "a", "b", "a", "c"])
    ]
    counts = {
        (c.key.resolution, c.key.facet): (c.count, c.uniques) for c in recount(lines).account()
    }
    assert counts[("hour", "")] == (5, 3)
    assert counts[("month", "k")] == (5, 3)


def test_day_uniques_are_distinct_across_hours() -> None:
    base = {"company_id": "C", "statistic_id": "S", "customer_id": "a"}
    lines = [
        json.dumps({**base, "event_id": f"e{i}", "timestamp": 1544153562 + 3600 * i})
        for i in range(3)
    ]
    by_res = {
        c.key.resolution: (c.count, c.uniques)
        for c in recount(lines).account()
        if c.key.resolution != "hour"
    }
    assert by_res == {"day": (3, 1), "month": (3, 1)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60))
def test_dedup_is_idempotent(picks: list[int]) -> None:
    pool = [json.dumps(e) for e in tricky_events()][:41]
    lines = [pool[i % len(pool)] for i in picks]
    assert recount_counts(lines) == recount_counts(lines + lines)
    assert recount_counts(lines) == recount_counts(list(dict.fromkeys(lines)))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_fan_out_is_deterministic(seed: int) -> None:
    (event,) = generate(GeneratorConfig(n=1, seed=seed, facets=8))
    parsed = parse_event(json.dumps(event))
    assert isinstance(parsed, Event)
    assert account_keys(parsed) == account_keys(parse_event(json.dumps(event)))  # type: ignore[arg-type]
    assert len(account_keys(parsed)) == 3 * (1 + len(parsed.facets))
    assert len(set(account_keys(parsed))) == len(account_keys(parsed))


def test_generator_is_deterministic_and_skewed() -> None:
    config = GeneratorConfig(n=5000, seed=11)
    first, second = list(generate(config)), list(generate(config))
    assert first == second
    by_company = Counter(e["company_id"] for e in first).most_common()
    assert by_company[0][1] > 10 * by_company[-1][1]  # a few large, many small
    assert list(generate(GeneratorConfig(n=50, seed=12))) != first[:50]


def test_key_ids_are_injective() -> None:
    from counting import account_key_of_id, key_id

    a = AccountKey("C", "S", "hour", "2025-12-01T00", "f\x1fx", "v")
    b = AccountKey("C", "S", "hour", "2025-12-01T00", "f", "x\x1fv")
    assert key_id(a) != key_id(b)
    assert json.loads(key_id(a)) == list(a)
    assert account_key_of_id(key_id(a)) == a and account_key_of_id(key_id(b).encode()) == b
    assert key_id(("C", 'x","y')) != key_id(("C", "x", "y"))
