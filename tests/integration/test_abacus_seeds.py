"""Seed records on real Kafka, Cassandra and a Flink MiniCluster (issue 14's m1 hand-over).

As the hand-over does it, on a fresh live topic of the test's own: seeds written
(`abacus.seeds.write_seeds`), the jobs started on that topic (`--topic`; the run's default
topic holds other events, which must not count) and drained, then the events. In between,
the statistic job is stopped with a savepoint and restored (the absorbed seeds are its
state). The statistic job's uniques equal `Recount` with the seeds absorbed, exactly, and
differ from `Recount` without them; the customer job ignores seeds (its counts equal the
recount); a record with the seed header that is no seed is dead-lettered as `bad_seed`, and
a body shaped like a seed without the header is an event (here an invalid one); nothing else
is dead-lettered. `counted_uniques` reads back, per (company, customer), the keys of the
first deliveries and of the seeds.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest

from abacus import manager
from abacus.seeds import counted_uniques, write_seeds
from counting import AccountKey, Dedup, Event, account_keys, parse_event
from counting.seeds import SEED_HEADER, SEED_VERSION, absorbed_keys, parse_seed, seed_records
from settings.model import Settings
from tests.integration.abacus_runs import (
    Run,
    account_counts,
    customer_counts,
    first_differences,
    generated_events,
    isolated_run,
    recount_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Entries = list[tuple[str, str, list[AccountKey]]]


@pytest.fixture(scope="module")
def run(settings: Settings, services_up: object) -> Iterator[Run]:
    with isolated_run(settings, f"s{uuid.uuid4().hex[:8]}") as state:
        yield state


@pytest.fixture(scope="module")
def live(run: Run) -> Iterator[str]:
    """The run's live topic (created by write_seeds), deleted after."""
    from confluent_kafka.admin import AdminClient

    topic = f"{run.settings.kafka.topic}.live"
    yield topic
    admin = AdminClient(run.settings.kafka.client_config())
    for future in admin.delete_topics([topic]).values():
        future.result()


def _firsts(lines: list[str]) -> list[Event]:
    dedup, out = Dedup(), []
    for line in lines:
        parsed = parse_event(line)
        if isinstance(parsed, Event) and dedup.first(parsed.event_id):
            out.append(parsed)
    return out


def _entries(events: list[Event]) -> Entries:
    """Seeds for every second (company, customer): the hour keys of its first event and the
    day keys of its last (so closure and both resolutions matter), and a bucket with no
    event (a seed alone counts nothing)."""
    by_customer: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        by_customer.setdefault((event.company_id, event.customer_id), []).append(event)
    entries: Entries = []
    for i, ((company, customer), mine) in enumerate(sorted(by_customer.items())):
        if i % 2:
            continue
        keys = [k for k in account_keys(mine[0]) if k.resolution == "hour"]
        keys += [k for k in account_keys(mine[-1]) if k.resolution == "day"]
        keys.append(keys[0]._replace(resolution="day", bucket="2001-01-01"))
        entries.append((company, customer, keys))
    return entries


def _produce(run: Run, topic: str, records: list[tuple[bytes, bytes | None, Any]]) -> None:
    """(value, key, headers) records, confirmed by Kafka."""
    from confluent_kafka import Producer

    producer = Producer({**run.settings.kafka.client_config(), "acks": "all"})
    for value, key, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0


def _dlq_reasons(run: Run) -> Counter[tuple[str, str]]:
    """(source, reason) of every record of the run's DLQ topic, to its end offset."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = run.settings.kafka.dlq_topic
    consumer = Consumer(
        {
            **run.settings.kafka.client_config(),
            "group.id": f"{run.prefix}dlq",
            "enable.auto.commit": False,
        }
    )
    try:
        _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got: Counter[tuple[str, str]] = Counter()
        seen = 0
        while seen < end:
            for msg in consumer.consume(100, timeout=5):
                assert msg.error() is None, msg.error()
                pairs = cast(list[tuple[str, bytes]], msg.headers() or [])
                headers = {k: (v or b"").decode() for k, v in pairs}
                got[(headers["source"], headers["reason"])] += 1
                seen += 1
        return got
    finally:
        consumer.close()


def test_seeded_jobs_count_uniques_as_recount_with_seeds(run: Run, live: str) -> None:
    lines = generated_events(seed=21, n=1200)
    entries = _entries(_firsts(lines))
    assert entries

    # the hand-over: seeds first, on the live topic (created here) ...
    written = write_seeds(run.settings, live, entries)
    assert written == len(entries)  # one record each: these fit
    company = entries[0][0]
    seed_shaped = seed_records(company, "intruder", entries[0][2])[0]
    _produce(
        run,
        live,
        [
            (seed_shaped, company.encode(), None),  # no header: an (invalid) event
            (b'{"abacus_seed": 2}', company.encode(), [(SEED_HEADER, SEED_VERSION)]),
        ],
    )
    run.produce(lines[:50])  # the run's default topic: not the jobs' topic, never counted
    # ... absorbed by the jobs started on the live topic (drained: checkpointed) ...
    states = manager.start_jobs(run.settings, "shadow", run.options(topic=live))
    assert {s.topic for s in states} == {live}
    names = [run.name("statistic"), run.name("customer")]
    manager.wait_drained(run.settings, names, 300)
    # the absorbed seeds are in the job's state: they survive a stop and a restore
    stopped = manager.stop(run.settings, run.name("statistic"), savepoint=True)
    restarted = manager.start(run.settings, "statistic", "shadow", run.options(topic=live))
    assert restarted.restored_from == stopped.savepoint, (restarted, stopped)
    # ... then the events, keyed by company as the bridge keys them
    _produce(
        run,
        live,
        [
            (line.encode(), parse_event(line).company_id.encode(), None)  # type: ignore[union-attr]
            for line in lines
        ],
    )
    manager.wait_drained(run.settings, names, 300)

    plain = recount_of(lines)
    seeded = recount_of([])
    for company_id, customer, keys in entries:
        for value in seed_records(company_id, customer, keys):
            seeded.absorb(parse_seed(value))
    for line in lines:
        seeded.add_raw(line)
    store = run.store()
    got = account_counts(store.scan("account"))
    want = account_counts(seeded.account())
    assert got == want, first_differences(got, want)
    without = account_counts(plain.account())
    assert want != without  # the seeds changed uniques: this test can fail
    assert {k: c for k, (c, _u) in want.items()} == {k: c for k, (c, _u) in without.items()}
    got_c, want_c = customer_counts(store.scan("customer")), customer_counts(plain.customer())
    assert got_c == want_c, first_differences(got_c, want_c)

    reasons = _dlq_reasons(run)
    assert reasons == {
        ("abacus-statistic", "bad_seed"): 1,
        ("abacus-customer", "bad_seed"): 1,
        ("abacus-statistic", "missing_field"): 1,  # the seed-shaped body without the header
        ("abacus-customer", "missing_field"): 1,
    }, reasons
    assert all(s.status == "RUNNING" for s in map(_status(run), names))


def _status(run: Run) -> Any:
    return lambda name: manager.status(run.settings, name)


def test_counted_uniques_reads_first_deliveries_and_seeds(run: Run, live: str) -> None:
    """After the first test: the live topic's seeds and events, read back."""
    lines = generated_events(seed=21, n=1200)
    want: dict[tuple[str, str], set[AccountKey]] = {}
    for event in _firsts(lines):
        want.setdefault((event.company_id, event.customer_id), set()).update(account_keys(event))
    for company, customer, keys in _entries(_firsts(lines)):
        want.setdefault((company, customer), set()).update(absorbed_keys(keys))
    got = counted_uniques(run.settings, live)
    assert {(c, u): set(k) for c, u, k in got} == want
    assert [(c, u) for c, u, _ in got] == sorted(want)
    assert json.dumps(got)  # plain data (what the back-fill is handed)
