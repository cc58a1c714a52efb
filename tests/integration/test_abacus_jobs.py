"""The milestone-1 jobs on real Kafka, Cassandra and a Flink MiniCluster.

One module, one pair of jobs reused through a sequence of steps (starting a PyFlink job
costs tens of seconds on this machine), each step asserting one property of the issue:

1. the tricky corpus with injected duplicates and the poison corpus (lone surrogates, invalid
   UTF-8, NULs, bidi controls, huge ids and numbers, deep nesting, records over the DLQ
   topic's size limit), published straight to Kafka: both stores equal `recount` exactly;
2. every invalid line reaches the DLQ with its reason, from each job, its headers writable
   (escaped and cut where needed, and saying so), and the jobs are still RUNNING;
3. the customer job stopped with a savepoint: the statistic job (own group) keeps counting;
4. the customer job restarted from that savepoint, more events: both exact;
5. milestone 1's known excess, measured: the statistic job is killed (SIGKILL) after its
   window was written and before the next checkpoint; restarted, it re-applies exactly the
   increments since that checkpoint (counts >= truth, excess reported).

Apart (its own topics, keyspaces and job): a job that keeps failing (its sink cannot reach
Cassandra) is reported restart-looping, then FAILED after its bounded restarts, with the
root exception from its log, by `manager.status` and `abacus job status`.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abacus import manager
from abacus.operators import DLQ_FALLBACK_BYTES, MAX_HEADER_CHARS
from counting import Rejection, bucket_date, parse_event
from counting.corpus import poison_lines, tricky_lines
from counting.text import escape
from settings.model import Settings
from tests.integration.abacus_runs import (
    MAX_DLQ_MESSAGE,
    Run,
    account_counts,
    customer_counts,
    first_differences,
    generated_events,
    isolated_run,
    recount_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(settings: Settings, services_up: object) -> Iterator[Run]:
    with isolated_run(settings, f"t{uuid.uuid4().hex[:8]}") as state:
        yield state


def _exact(run: Run, kinds: tuple[str, ...] = ("statistic", "customer")) -> None:
    """The stores equal the recount, and each date's key index (which compare reads) lists
    exactly the keys counted on that date."""
    truth = recount_of(run.lines)
    store = run.store()
    if "statistic" in kinds:
        got, want = account_counts(store.scan("account")), account_counts(truth.account())
        assert got == want, first_differences(got, want)
        _check_index(
            run,
            "account",
            {
                (bucket_date(k.bucket), k.company_id, k.statistic_id)
                for k in want
                if k.resolution == "hour"
            },
        )
    if "customer" in kinds:
        got_c, want_c = customer_counts(store.scan("customer")), customer_counts(truth.customer())
        assert got_c == want_c, first_differences(got_c, want_c)
        _check_index(
            run,
            "customer",
            {
                (bucket_date(k.bucket), k.company_id, k.customer_id, k.statistic_id)
                for k in want_c
                if k.resolution == "hour"
            },
        )


def _check_index(run: Run, level: str, want: set[tuple[str, ...]]) -> None:
    """The index rows of want's dates, read shard by shard as compare reads them, == want."""
    store, got = run.store(), set()
    for date in {w[0] for w in want}:
        for statement, params in store.index_requests(date, level):
            got |= {(date, *row) for row in run.session.execute(statement, params)}
    assert got == want, sorted(got ^ want)[:5]


def test_tricky_and_poison_corpus_with_duplicates_equals_recount(run: Run) -> None:
    lines = tricky_lines()
    valid = [line for line in lines if line.startswith('{"event_id": "tricky')]
    poison = [raw for _, raw in poison_lines()]
    run.produce([*lines, *poison, *valid[::7]])  # more redeliveries, after their first
    manager.start_jobs(run.settings, "shadow", run.options())
    manager.wait_drained(run.settings, [run.name("statistic"), run.name("customer")], 300)
    _exact(run)


def _dlq_records(run: Run) -> list[Any]:
    """Every record of the run's DLQ topic, to its end offset."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = run.settings.kafka.dlq_topic
    consumer = Consumer(
        {
            **run.settings.kafka.client_config(),
            "group.id": f"{run.prefix}dlq",
            "enable.auto.commit": False,
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list[Any] = []
        deadline = time.monotonic() + 120
        while len(out) < end:
            assert time.monotonic() < deadline, f"{topic}: read {len(out)} of {end} records"
            out += [m for m in consumer.consume(500, timeout=1.0) if m.error() is None]
        return out
    finally:
        consumer.close()


def _expected_dead_letter(raw: bytes, rejection: Rejection) -> tuple[bytes, dict[str, str]]:
    """The DLQ record of an invalid line: its bytes (their head if they are over the DLQ
    topic's limit) and headers: the contract's reason, id and detail, escaped where they
    cannot be encoded and cut to MAX_HEADER_CHARS, each change said in a header."""
    headers: dict[str, str] = {"reason": rejection.reason.value}
    escaped, truncated = False, []
    for name, text in (("detail", rejection.detail), ("event_id", rejection.event_id or "")):
        text, changed = escape(text)
        escaped |= changed
        if len(text) > MAX_HEADER_CHARS[name]:
            truncated.append(f"{name}={len(text)}")
        headers[name] = text[: MAX_HEADER_CHARS[name]]
    if escaped:
        headers["escaped"] = "1"
    if truncated:
        headers["truncated"] = ",".join(truncated)
    if len(raw) > MAX_DLQ_MESSAGE:
        headers["truncated_to"] = str(DLQ_FALLBACK_BYTES)
        return raw[:DLQ_FALLBACK_BYTES], headers
    return raw, headers


def _canonical(record: tuple[bytes, dict[str, str]]) -> tuple[bytes, tuple[Any, ...]]:
    return record[0], tuple(sorted(record[1].items()))


def test_invalid_events_reach_the_dlq_with_reasons(run: Run) -> None:
    want = []
    for line in run.lines:
        raw = line.encode() if isinstance(line, str) else line
        if isinstance(parsed := parse_event(raw), Rejection):
            want.append(_expected_dead_letter(raw, parsed))
    assert any("escaped" in h for _, h in want) and any("truncated_to" in h for _, h in want)
    records = _dlq_records(run)
    for source in ("abacus-statistic", "abacus-customer"):
        got = []
        for m in records:
            headers = {k: v.decode("utf-8") for k, v in m.headers() or []}  # strict UTF-8
            if headers.pop("source") == source:
                got.append((m.value(), headers))
        assert len(got) == len(want), f"{source}: {len(got)} dead letters, {len(want)} expected"
        unmatched = Counter(map(_canonical, want))
        unmatched.subtract(map(_canonical, got))
        wrong = {k: n for k, n in unmatched.items() if n}
        assert not wrong, (
            f"{source}: {len(wrong)} dead letters differ (-1: unexpected), e.g. "
            f"{[(k[0][:80], k[1], n) for k, n in list(wrong.items())[:3]]}"
        )
    for kind in ("statistic", "customer"):
        state = manager.status(run.settings, run.name(kind))
        assert state is not None and state.status == "RUNNING", state


def test_stopping_one_job_leaves_the_other_counting(run: Run) -> None:
    stopped = manager.stop(run.settings, run.name("customer"), savepoint=True)
    assert stopped.status == "STOPPED" and stopped.savepoint
    customer_before = customer_counts(run.store().scan("customer"))
    run.produce(generated_events(seed=1, n=300))
    manager.wait_drained(run.settings, [run.name("statistic")], 300)
    _exact(run, ("statistic",))
    assert customer_counts(run.store().scan("customer")) == customer_before
    lag = manager.drain_status(run.settings, run.name("customer")).lag
    assert lag > 0  # its own group: the statistic job's progress is not its progress


def test_restart_from_savepoint_is_exact(run: Run) -> None:
    savepoint = manager.status(run.settings, run.name("customer")).savepoint  # type: ignore[union-attr]
    assert savepoint
    state = manager.start(
        run.settings, "customer", "shadow", run.options(from_savepoint=Path(savepoint))
    )
    assert state.restored_from == savepoint
    run.produce(generated_events(seed=2, n=300))
    manager.wait_drained(run.settings, [run.name("statistic"), run.name("customer")], 300)
    _exact(run)


def test_crash_after_write_before_checkpoint_reapplies_increments(run: Run) -> None:
    """Milestone 1's honest guarantee: at-least-once increments. Measured, not hidden."""
    name = run.name("statistic")
    stopped = manager.stop(run.settings, name, savepoint=True)
    assert stopped.savepoint
    # no checkpoint in this run: everything it writes is after its restore point
    slow = run.settings.model_copy(
        update={
            "flink": run.settings.flink.model_copy(update={"checkpoint_interval_ms": 3_600_000})
        }
    )
    state = manager.start(slow, "statistic", "shadow", run.options())
    assert state.restored_from == stopped.savepoint
    batch = generated_events(seed=3, n=200)
    run.produce(batch)
    increments = sum(c.count for c in recount_of(batch).account())
    deadline = time.monotonic() + 300
    while True:  # written, but not checkpointed (lag stays: offsets commit on checkpoints)
        drain = manager.drain_status(slow, name)
        if drain.written == increments and drain.fanned == increments:
            break
        assert time.monotonic() < deadline, drain
        time.sleep(0.5)
    assert drain.lag > 0
    assert state.pid is not None
    os.killpg(state.pid, signal.SIGKILL)  # the runner and its JVM: a machine crash
    manager.wait_for(run.settings, name, {"LOST"}, 60)
    restarted = manager.start(run.settings, "statistic", "shadow", run.options())
    assert restarted.restored_from == stopped.savepoint
    manager.wait_drained(run.settings, [name], 300)

    truth = account_counts(recount_of(run.lines).account())
    got = account_counts(run.store().scan("account"))
    assert got.keys() == truth.keys()
    under = [k for k in truth if got[k][0] < truth[k][0] or got[k][1] < truth[k][1]]
    assert not under, under[:5]
    excess = sum(got[k][0] - truth[k][0] for k in truth)
    print(
        f"\nmilestone-1 crash excess: {excess} count increments re-applied "
        f"({increments} written between the restore point and the crash)"
    )
    assert excess == increments


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_job_that_keeps_failing_is_reported_failed_with_its_reason(
    settings: Settings, services_up: object
) -> None:
    """Its sink cannot reach Cassandra: every start fails (after the sink's minute of
    connection retries). After its one restart the job ends FAILED, and `job status`,
    its log and what `shadow run` checks on every sample (`monitor.job_problem`) all say so
    with the driver's error. How many restarts the MiniCluster reported before it shut down
    is sampled, so it is not asserted exactly (CI saw 0 of 1 under load)."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from cli import root
    from shadow import monitor

    with isolated_run(
        settings,
        f"f{uuid.uuid4().hex[:8]}",
        restart_attempts=1,
        restart_delay_s=2.0,
        restart_max_delay_s=2.0,
    ) as run:
        port = _closed_port()
        broken = run.settings.model_copy(
            update={"cassandra": run.settings.cassandra.model_copy(update={"port": port})}
        )
        name = run.name("customer")
        manager.launch(broken, "customer", "shadow", run.options())
        seen: list[str] = []
        shadow_saw: list[str] = []  # what `shadow run` stops on (it checks every sample)
        inst: Any = SimpleNamespace(settings=broken)
        deadline = time.monotonic() + 900
        while True:
            state = manager.status(broken, name)
            shown = manager.describe(state) if state is not None else "no state"
            if not seen or seen[-1] != shown:
                seen.append(shown)
            if (stop := monitor.job_problem(inst, {"customer": name})) is not None:
                shadow_saw.append(stop)
            if state is not None and state.status in manager.ENDED:
                break
            assert time.monotonic() < deadline, (
                f"not FAILED after 900 s; seen {seen}, log: {manager.logs(broken, name, 20)}"
            )
            time.sleep(0.2)
        assert state.status == "FAILED", (seen, state)
        assert state.restarts <= 1, (seen, state)
        assert state.error and (str(port) in state.error or "contact point" in state.error), state
        problem = manager.problem(state)
        assert problem is not None and problem.startswith(f"job {name} is FAILED")
        assert problem.endswith(f": {state.error}"), problem
        assert shadow_saw and shadow_saw[-1] == f"Abacus {problem} (`abacus job logs {name}`)", (
            shadow_saw[-1:]
        )
        assert state.error in manager.logs(broken, name, 50)  # the reason is in its log

        doc = CliRunner().invoke(root, ["job", "status", "--format", "json"])
        assert doc.exit_code == 0, doc.output
        record = next(r for r in json.loads(doc.output) if r["name"] == name)
        assert (record["status"], record["problem"]) == ("FAILED", problem)
        print(f"\nstatus seen: {seen}\nreason: {state.error}")


def test_a_dead_letter_the_dlq_refuses_fails_the_job_with_its_reason(
    settings: Settings, services_up: object
) -> None:
    """The one per-record failure left: a DLQ topic that refuses even the dead letter's head
    (max.message.bytes 1,000 here). The record is not dropped: the job fails on it, once
    restarted, then ends FAILED with the Python operator's error as its reason."""
    with isolated_run(
        settings,
        f"d{uuid.uuid4().hex[:8]}",
        dlq_max_message=1000,
        restart_attempts=1,
        restart_delay_s=1.0,
        restart_max_delay_s=1.0,
    ) as run:
        name = run.name("customer")
        run.produce([b'{"event_id": "big", "pad": "' + b"x" * (DLQ_FALLBACK_BYTES + 1) + b'"}'])
        manager.launch(run.settings, "customer", "shadow", run.options())
        deadline = time.monotonic() + 300
        while (
            state := manager.status(run.settings, name)
        ) is None or state.status not in manager.ENDED:
            assert time.monotonic() < deadline, (
                f"not ended after 300 s: {state}; log: {manager.logs(run.settings, name, 20)}"
            )
            time.sleep(0.2)
        # the restart count is sampled while the MiniCluster runs (CI saw 0 of 1): not exact
        assert state.status == "FAILED" and state.restarts <= 1, state
        assert state.error and state.error.startswith(
            f"RuntimeError: dead-letter publish to {run.settings.kafka.dlq_topic} failed: "
        ), state
        assert "MSG_SIZE_TOO_LARGE" in state.error, state
        print(f"\nreason: {state.error}")
