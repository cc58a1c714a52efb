"""Seed records (`counting.seeds`, issue 14's m1 hand-over): the format round trip, that only
the header makes a record a seed, what absorbing one means for `Recount`, what the jobs'
Validate makes of seeds, and `CountedKeys` (what `abacus.seeds.counted_uniques` returns)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abacus.operators import BAD_SEED, Validate, seed_rows
from counting import AccountKey, Event, Recount, account_keys, parse_event
from counting.seeds import (
    SEED_HEADER,
    SEED_VERSION,
    CountedKeys,
    Seed,
    SeedError,
    absorbed_keys,
    is_seed,
    parse_seed,
    seed_of,
    seed_records,
)

HEADERS = [(SEED_HEADER, SEED_VERSION)]


def _event(event_id: str, customer: str, ts: int, **props: object) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "company_id": "C",
            "customer_id": customer,
            "statistic_id": "S",
            "timestamp": ts,
            "properties": props,
        }
    )


T0 = 1544153562  # 2018-12-07T03 UTC


def _keys(line: str) -> list[AccountKey]:
    parsed = parse_event(line)
    assert isinstance(parsed, Event)
    return account_keys(parsed)


def test_format_round_trip_and_split() -> None:
    keys = _keys(_event("e1", "X", T0, browser="Safari", ip=""))
    (value,) = seed_records("C", "X", keys)
    assert json.loads(value)["abacus_seed"] == 1
    assert parse_seed(value) == Seed("C", "X", tuple(sorted(keys)))
    small = seed_records("C", "X", [*keys, *keys], max_bytes=160)  # duplicates dropped
    assert len(small) > 1
    back = [k for v in small for k in parse_seed(v).keys]
    assert back == sorted(keys)
    assert all(len(v) <= 160 for v in small)
    assert seed_records("C", "X", []) == []


@given(
    st.text(min_size=1, max_size=64),
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=8),
)
def test_any_ids_and_facets_round_trip(customer: str, pairs: list[tuple[str, str]]) -> None:
    keys = [AccountKey("C", "S", "hour", "2018-12-07T03", f, v) for f, v in pairs]
    back = [
        k for v in seed_records("C", customer, keys, max_bytes=4096) for k in parse_seed(v).keys
    ]
    assert back == sorted(set(keys))
    assert all(parse_seed(v).customer_id == customer for v in seed_records("C", customer, keys))


@pytest.mark.parametrize(
    "company,customer,key,match",
    [
        ("C", "", AccountKey("C", "S", "hour", "2018-12-07T03", "", ""), "customer_id"),
        ("C", "X", AccountKey("D", "S", "hour", "2018-12-07T03", "", ""), "company"),
        ("C", "X", AccountKey("C", "S", "week", "2018-12-07T03", "", ""), "resolution"),
        ("C", "X", AccountKey("C", "S", "day", "2018-12-07T03", "", ""), "bucket"),
        ("C", "X", AccountKey("C", "", "day", "2018-12-07", "", ""), "statistic_id"),
    ],
)
def test_what_a_seed_cannot_hold_is_refused(
    company: str, customer: str, key: AccountKey, match: str
) -> None:
    with pytest.raises(SeedError, match=match):
        seed_records(company, customer, [key])


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[]",
        b'{"abacus_seed": 2, "company_id": "C", "customer_id": "X", "keys": []}',
        b'{"abacus_seed": 1, "company_id": "C", "customer_id": "X"}',
        b'{"abacus_seed": 1, "company_id": "C", "customer_id": "X", "keys": [["S"]]}',
        b'{"abacus_seed": 1, "company_id": "C", "customer_id": 7, "keys": []}',
    ],
)
def test_a_body_that_is_no_seed_is_refused(value: bytes) -> None:
    with pytest.raises(SeedError):
        parse_seed(value)


def test_only_the_header_makes_a_seed() -> None:
    (value,) = seed_records("C", "X", _keys(_event("e1", "X", T0)))
    assert seed_of(value, None) is None  # a seed-shaped body without the header: an event
    assert seed_of(value, [("content_type", b"application/json")]) is None
    assert seed_of(value, HEADERS) == parse_seed(value)
    assert is_seed(HEADERS) and not is_seed([]) and not is_seed(None)
    # as an event it is invalid (no event_id ...): dead-lettered, counted nowhere
    recount = Recount()
    assert recount.add_raw(value) is not None
    # and a valid event that also looks like a seed is an event, counted
    crafted = json.loads(_event("e2", "X", T0))
    crafted.update(abacus_seed=1, keys=[])
    counted = CountedKeys()
    counted.add_record(json.dumps(crafted).encode(), None)
    assert counted.events == 1 and counted.seeds == 0


def test_absorbed_keys_are_upward_closed() -> None:
    hour = AccountKey("C", "S", "hour", "2018-12-07T03", "browser", "Safari")
    assert absorbed_keys([hour]) == {
        hour,
        hour._replace(resolution="day", bucket="2018-12-07"),
        hour._replace(resolution="month", bucket="2018-12"),
    }
    month = hour._replace(resolution="month", bucket="2018-12")
    assert absorbed_keys([month]) == {month}


def _account(recount: Recount) -> dict[tuple[str, ...], tuple[int, int]]:
    return {tuple(c.key): (c.count, c.uniques) for c in recount.account()}


def test_recount_with_seeds() -> None:
    lines = [
        _event("e1", "X", T0, browser="Safari"),
        _event("e2", "Y", T0, browser="Safari"),
        _event("e3", "X", T0 + 3600, browser="Firefox"),  # the next hour, same day
        _event("e4", "Z", T0 + 40 * 86400),  # another month
    ]
    plain, seeded = Recount(), Recount()
    hour = AccountKey("C", "S", "hour", "2018-12-07T03", "", "")
    seeded.absorb(Seed("C", "X", (hour, hour._replace(facet="browser", value="Safari"))))
    seeded.absorb(Seed("C", "Y", (hour._replace(resolution="day", bucket="2018-12-07"),)))
    seeded.absorb(Seed("C", "Q", (hour._replace(bucket="2018-12-07T09"),)))  # no event there
    for line in lines:
        plain.add_raw(line)
        seeded.add_raw(line)
    want, got = _account(plain), _account(seeded)
    assert {k: c for k, (c, _) in got.items()} == {k: c for k, (c, _) in want.items()}
    changed = {k: (want[k][1], got[k][1]) for k in want if want[k] != got[k]}
    assert changed == {
        # X seeded in hour 03 (total and Safari) and so in its day and month; Y in the day
        ("C", "S", "hour", "2018-12-07T03", "", ""): (2, 1),  # Y only
        ("C", "S", "hour", "2018-12-07T03", "browser", "Safari"): (2, 1),
        ("C", "S", "day", "2018-12-07", "", ""): (2, 0),
        ("C", "S", "day", "2018-12-07", "browser", "Safari"): (2, 1),  # Y: its total only
        ("C", "S", "month", "2018-12", "", ""): (2, 0),  # Y's day seeds its month
        ("C", "S", "month", "2018-12", "browser", "Safari"): (2, 1),
    }
    assert seeded.seeds == 3
    assert ("C", "S", "hour", "2018-12-07T09", "", "") not in got  # a seed counts nothing


def test_validate_turns_seeds_into_seed_rows() -> None:
    class Tag:
        pass

    rejected, seeds = Tag(), Tag()
    keys = _keys(_event("e1", "X", T0, browser="Safari"))
    hours = [k for k in keys if k.resolution == "hour"]
    (value,) = seed_records("C", "X", hours)
    out = list(Validate(rejected, True, seeds).process_element((value, True), None))
    assert all(tag is seeds for tag, _ in out)
    rows = [tuple(row) for _, row in out]
    assert rows == list(seed_rows(parse_seed(value)))
    assert {(r[3], r[4]) for r in rows} == {
        ("hour", "2018-12-07T03"),
        ("day", "2018-12-07"),
        ("month", "2018-12"),
    }
    assert all(r[5] == ["", "browser"] and r[6] == ["", "Safari"] for r in rows)
    # the customer job: nothing; a bad seed: dead-lettered by either
    assert list(Validate(rejected, False).process_element((value, True), None)) == []
    for job in (Validate(rejected, True, seeds), Validate(rejected, False)):
        ((tag, row),) = list(job.process_element((b'{"abacus_seed": 2}', True), None))
        assert tag is rejected and row[1] == BAD_SEED
    # the same bytes without the header: an event (here an invalid one)
    ((tag, row),) = list(Validate(rejected, True, seeds).process_element((value, False), None))
    assert tag is rejected and row[1] == "missing_field"


def test_counted_keys_first_deliveries_and_seeds() -> None:
    e1 = _event("e1", "X", T0, browser="Safari")
    seed_key = AccountKey("C", "S", "hour", "2018-12-07T09", "", "")
    counted = CountedKeys()
    for value, headers in [
        (e1.encode(), None),
        (_event("e1", "X", T0 + 7200).encode(), None),  # a redelivery of e1: not counted
        (b"{}", None),
        (seed_records("C", "Y", [seed_key])[0], HEADERS),
        (b"garbage", HEADERS),
    ]:
        counted.add_record(value, headers)
    assert (counted.events, counted.duplicates, counted.invalid) == (1, 1, 1)
    assert (counted.seeds, counted.bad_seeds) == (1, 1)
    assert counted.entries() == [
        ("C", "X", sorted(_keys(e1))),
        ("C", "Y", sorted(absorbed_keys([seed_key]))),
    ]


def test_a_job_counts_its_own_topic() -> None:
    from abacus.jobs import RunOptions, spec
    from abacus.pipeline import job_topic
    from settings import load_settings

    settings = load_settings()
    default = spec(settings, "statistic", "serving", RunOptions(), "statistic-serving", "", 0)
    live = spec(settings, "statistic", "serving", RunOptions(topic="abacus.live.e3"), "n", "", 0)
    assert (default.topic, live.topic) == (settings.kafka.topic, "abacus.live.e3")
    assert job_topic(settings, live) == "abacus.live.e3"
    older = spec(settings, "customer", "shadow", RunOptions(), "c", "", 0)
    # a request of an older version (no topic): kafka.topic
    assert job_topic(settings, dataclasses.replace(older, topic="")) == settings.kafka.topic
