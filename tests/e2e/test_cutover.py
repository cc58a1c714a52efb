"""The staged cutover end to end on the real servers (issue 14, item 6).

Traffic flows at a steady rate through `legacy -> shadow -> m1 -> rollback to shadow -> m1`
(the commands an operator runs: `abacus cutover ...` as subprocesses), with events for the
same customers and buckets on both sides of every switch. Along the way: without audits
the gate to m1 refuses, `--force --reason` passes it and is recorded, two operators rolling
back at once: one wins, the other is refused; an operator SIGKILLed in the middle of the
second advance to m1 leaves "in transition, step k of n", and advancing again finishes it.
The read API (`abacus serve`, started once) answers every probe from the store the stage
designates, following each change without a restart. During m1 the legacy queue's only
consumer is the live bridge (sampled every second).

At the end (traffic stopped, everything drained): the serving tables (legacy's counter
tables) equal the recount of every published event exactly, counts and uniques; the shadow
store equals the recount of every event the mirror topic holds; every transition is
recorded.

The generated events have no duplicate event ids: legacy does not de-duplicate (SEMANTICS.md),
and Abacus de-duplicates within one live topic only, so a duplicate pair split by a switch
would be counted twice by design of the old system; the contract the cutover keeps is
"each delivery counted by exactly one system".
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import storage
from counting import AccountCount, CustomerCount, Recount
from counting.generate import GeneratorConfig, generate
from cutover.stages import read_stores
from cutover.state import StageStore, TransitionLog
from cutover.steps import LIVE_TAG, job_names, live_topic, serving_prefix
from legacy.app import WorkerOptions
from legacy.handover import queue_consumers
from legacy.producer import publish_lines
from legacy.worker import start_worker
from services import procs
from services.paths import data_dir
from settings.model import Settings
from shadow.installation import overrides
from tests.integration.abacus_runs import first_differences
from tests.waiting import wait_for, wait_until

pytestmark = pytest.mark.e2e

RATE = 25.0  # events/s, steady
DEADLINE_S = 600.0


@dataclass
class Traffic:
    """Publishes generated events at RATE until stopped; `published` is every line sent
    (confirmed by RabbitMQ once the thread ended)."""

    settings: Settings
    lines: Iterator[str]
    published: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def _feed(self) -> Iterator[str]:
        for line in self.lines:
            if self.stop.is_set():
                return
            self.published.append(line)
            yield line

    def _run(self) -> None:
        try:
            publish_lines(self.settings.rabbitmq, self._feed(), rate=RATE)
        except BaseException as exc:
            self.error.append(exc)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def more(self, n: int) -> None:
        """Wait until n more events were published."""
        target = len(self.published) + n
        wait_until(
            f"{n} more events published", lambda: self.error or len(self.published) >= target
        )
        assert not self.error, self.error

    def finish(self) -> list[str]:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=120)
        assert not self.thread.is_alive() and not self.error, self.error
        return self.published


def events(day: datetime) -> Iterator[str]:
    """Endless events on `day` (UTC), few companies and customers so every bucket sees the
    same customers again on each side of each switch; no duplicate ids."""
    seed = 0
    while True:
        config = GeneratorConfig(
            n=2000,
            seed=seed,
            companies=3,
            customers=90,
            statistics=2,
            campaigns=4,
            facets=2,
            timezones=("UTC",),
            start_ts=int(day.timestamp()) + 10 * 3600,
            span_s=2 * 3600,
        )
        for e in generate(config):
            e = dict(e)
            e["event_id"] = f"s{seed}-{e['event_id']}"  # unique across batches
            yield json.dumps(e)
        seed += 1


class Consumers:
    """Samples the legacy queue's consumer tags every second while `on`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.on = threading.Event()
        self.seen: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self.on.is_set():
                with contextlib.suppress(Exception):
                    tags = [c["consumer_tag"] for c in queue_consumers(self.settings)]
                    if self.on.is_set():
                        self.seen.append(tags)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def installation(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Settings]:
    tag = "c" + uuid.uuid4().hex[:8]
    changes = overrides(settings, tag)
    home = tmp_path / "data"
    home.mkdir()
    # the jars, installed once; the local RabbitMQ's directory (rabbitmqctl's cookie)
    for shared in ("lib", "rabbitmq"):
        (home / shared).symlink_to(data_dir(settings) / shared)
    isolated = settings.model_copy(
        update={
            **{
                section: getattr(settings, section).model_copy(update=values)
                for section, values in changes.items()
            },
            "services": settings.services.model_copy(update={"data_dir": home}),
            "flink": settings.flink.model_copy(
                update={"checkpoint_dir": home / "checkpoints", "checkpoint_interval_ms": 3000}
            ),
            "cutover": settings.cutover.model_copy(
                update={"live_topic": f"{settings.cutover.live_topic}.{tag}", "gate_days": 1}
            ),
            "serve": settings.serve.model_copy(update={"port": free_port()}),
        }
    )
    from legacy import resources as legacy_resources
    from storage import resources as storage_resources

    storage_resources.provision(isolated, ["legacy", "shadow", "ops"])
    legacy_resources.provision(isolated)
    yield isolated
    _cleanup(isolated)


def _cleanup(s: Settings) -> None:
    from abacus import manager
    from bridge import manage
    from bridge import resources as bridge_resources
    from legacy import resources as legacy_resources
    from storage import resources as storage_resources

    for name in ("live", "shadow"):
        with contextlib.suppress(Exception):
            manage.stop(s, name)
    for state in manager.statuses(s):
        if state.status in manager.RUNNING:
            with contextlib.suppress(Exception):
                manager.stop(s, state.name)
    with contextlib.suppress(Exception):
        bridge_resources.teardown(s)
    with contextlib.suppress(Exception):
        legacy_resources.teardown(s)
    with contextlib.suppress(Exception):
        storage_resources.teardown(s, ["legacy", "shadow", "ops"])
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(s.kafka.client_config())
    topics = [live_topic(s, e) for e in (1, 2, 3)]
    for fut in admin.delete_topics(topics).values():
        with contextlib.suppress(Exception):
            fut.result()
    shutil.rmtree(data_dir(s) / "checkpoints", ignore_errors=True)


def abacus(
    s: Settings, *args: str, timeout_s: float = DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=procs.child_env(s),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def operator(s: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=procs.child_env(s),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cutover(s: Settings, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = abacus(s, "cutover", *args)
    if ok:
        assert done.returncode == 0, f"cutover {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def unhealthy(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc["components"] if not c["ok"]]


def status(s: Settings) -> dict[str, Any]:
    done = abacus(s, "cutover", "status", "--format", "json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def probe(s: Settings, company: str, statistic: str, day: str) -> dict[str, Any]:
    query = f"company={company}&statistic={statistic}&resolution=day&from={day}&to={day}"
    url = f"http://127.0.0.1:{s.serve.port}/v1/account-counts?{query}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def expect_reads(s: Settings, stage: str, company: str, statistic: str, day: str) -> dict[str, Any]:
    """The read API follows the stage (within serve.stage_refresh_s) and answers from the
    store the stage designates."""
    control = read_stores(stage)[0]
    keyspace = storage.keyspace_of(s.cassandra, control)

    def answered() -> dict[str, Any] | None:
        doc = probe(s, company, statistic, day)
        return doc if doc.get("stage") == stage else None

    doc = wait_until(f"the read API follows stage {stage}", answered, 60)
    assert doc["store"] == control and doc.get("keyspace", keyspace) == keyspace, doc
    return doc


def drained(s: Settings, epoch: int) -> None:
    from abacus import manager
    from bridge import manage
    from legacy.handover import queue_counts

    wait_for(
        "the legacy queue empty (the live bridge took everything)",
        lambda: queue_counts(s),
        lambda q: (q.ready, q.unacked) == (0, 0),
        DEADLINE_S,
    )
    for name in ("live", "shadow"):
        wait_for(
            f"the {name} bridge has nothing in flight",
            lambda name=name: manage.status(s, name),
            lambda st: st.get("in_flight") == 0,
            DEADLINE_S,
        )
    wait_for(
        "the mirror queue empty",
        lambda: queue_counts(s, s.rabbitmq.shadow_queue),
        lambda q: (q.ready, q.unacked) == (0, 0),
        DEADLINE_S,
    )
    names = job_names("serving", serving_prefix(epoch)) + job_names("shadow", "cutover-")
    manager.wait_drained(s, names, DEADLINE_S)


def store_counts(s: Settings, name: str) -> tuple[dict[Any, tuple[int, int]], dict[Any, int]]:
    session = storage.connect(s.cassandra)
    try:
        store = storage.CounterStore(storage.Prepared(session), s.cassandra, name)
        account = {
            c.key: (c.count, c.uniques)
            for c in store.scan("account")
            if isinstance(c, AccountCount)
        }
        customer = {c.key: c.count for c in store.scan("customer") if isinstance(c, CustomerCount)}
        return account, customer
    finally:
        session.cluster.shutdown()


def recount_counts(
    lines: list[str] | list[bytes],
) -> tuple[dict[Any, tuple[int, int]], dict[Any, int]]:
    recount = Recount()
    for line in lines:
        recount.add_raw(line)
    account = {c.key: (c.count, c.uniques) for c in recount.account()}
    customer = {c.key: c.count for c in recount.customer()}
    return account, customer


def topic_values(s: Settings, topic: str) -> list[bytes]:
    """Every record value of `topic`, from its start to its end now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **s.kafka.client_config(),
            "group.id": f"t-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        values: list[bytes] = []
        position = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + 120
        while any(position[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"topic {topic}: read {position} of {ends}"
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            position[msg.partition()] = msg.offset() + 1
            values.append(msg.value())
        return values
    finally:
        consumer.close()


def test_cutover_legacy_shadow_m1_rollback_m1(installation: Settings, tmp_path: Path) -> None:
    s = installation
    # two days ago: a date over in every time zone, whenever the test runs (audits run refuses
    # a date still counting somewhere)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    day_label = day.date().isoformat()
    worker = start_worker(s, WorkerOptions(concurrency=2), tmp_path / "worker.log")
    serve = procs.spawn(s, ["-m", "cli", "serve"], tmp_path / "serve.log")
    consumers = Consumers(s)
    traffic = Traffic(s, events(day))
    try:
        wait_until("the read API answers", lambda: _answers(s), 120)
        traffic.start()
        traffic.more(100)
        first = json.loads(traffic.published[0])
        who = (first["company_id"], first["statistic_id"], day_label)
        assert status(s)["stage"] == "legacy"
        expect_reads(s, "legacy", *who)

        # legacy -> shadow: the mirror, the shadow bridge and jobs, on production traffic
        cutover(s, "advance", "--to", "shadow", "--yes")
        doc = status(s)
        assert doc["stage"] == "shadow" and doc["healthy"], unhealthy(doc)
        expect_reads(s, "shadow", *who)
        traffic.more(150)

        # the gate to m1: no clean audit, so it refuses and nothing changes
        refused = cutover(s, "advance", "--to", "m1", "--yes", ok=False)
        assert refused.returncode == 1 and "gate to m1 not passed" in refused.stderr, refused.stderr
        assert status(s)["stage"] == "shadow"
        audit = abacus(s, "audits", "run", "--date", day_label, "--format", "json")
        assert audit.returncode in (0, 1), audit.stderr  # recorded, clean or not

        # shadow -> m1, forced (the audit saw legacy's events from before the mirror existed)
        cutover(s, "advance", "--to", "m1", "--yes", "--force", "--reason", "pre-mirror events")
        consumers.on.set()  # m1 from here on
        doc = status(s)
        assert doc["stage"] == "m1" and doc["healthy"], unhealthy(doc)
        expect_reads(s, "m1", *who)
        traffic.more(200)

        # two operators roll back at once: one wins, the other is refused
        consumers.on.clear()  # m1 ends as the rollback begins
        ops = [operator(s, "cutover", "rollback", "--yes", "--reason", "drill") for _ in range(2)]
        outcomes = sorted((p.wait(DEADLINE_S), p.stderr.read() if p.stderr else "") for p in ops)
        assert [code for code, _ in outcomes] == [0, 1], outcomes
        assert "another operator" in outcomes[1][1] or "owner is alive" in outcomes[1][1], outcomes
        assert status(s)["stage"] == "shadow"
        expect_reads(s, "shadow", *who)
        traffic.more(150)  # legacy counts again, with the uniques Abacus counted back-filled

        # shadow -> m1 again; the operator is SIGKILLed halfway, the next one finishes it
        killed = operator(
            s, "cutover", "advance", "--to", "m1", "--yes", "--force", "--reason", "again"
        )
        session = storage.connect(s.cassandra)
        stages = StageStore(session, s.cassandra)
        try:
            wait_until(
                "the second advance reached its serving-jobs step",
                lambda: (stages.get().transition or {}).get("step", 0) >= 2,
            )
            killed.send_signal(signal.SIGKILL)
            killed.wait(60)
            doc = status(s)
            assert doc["transition"] is not None and doc["transition"]["to"] == "m1", doc
            assert doc["stage"] == "shadow" and not doc["healthy"]
            # the killed owner's lease runs out, then the next advance carries on
            resumed = abacus(s, "cutover", "advance", "--to", "m1", "--yes")
            while resumed.returncode == 1 and "owner is alive" in resumed.stderr:
                resumed = abacus(s, "cutover", "advance", "--to", "m1", "--yes")
            assert resumed.returncode == 0, f"{resumed.stdout}\n{resumed.stderr}"
            consumers.on.set()  # m1 again
            doc = status(s)
            assert doc["stage"] == "m1" and doc["epoch"] == 2, doc
            assert doc["healthy"], unhealthy(doc)
            expect_reads(s, "m1", *who)
            traffic.more(200)
            published = traffic.finish()
            drained(s, epoch=2)
            consumers.on.clear()

            # the serving tables: every event, counted exactly once, uniques exact
            want_account, want_customer = recount_counts(published)
            got_account, got_customer = store_counts(s, "serving")
            assert not first_differences(got_account, want_account)[:5], (
                f"serving account counters differ from the recount of {len(published)} events: "
                f"{first_differences(got_account, want_account)[:5]}"
            )
            assert got_customer == want_customer, first_differences(got_customer, want_customer)[:5]
            # the shadow store: every event the mirror topic holds
            mirrored = topic_values(s, s.kafka.topic)
            assert 0 < len(mirrored) < len(published)
            want_account, want_customer = recount_counts(mirrored)
            got_account, got_customer = store_counts(s, "shadow")
            assert got_account == want_account, first_differences(got_account, want_account)[:5]
            assert got_customer == want_customer, first_differences(got_customer, want_customer)[:5]

            # during m1, the legacy queue's only consumer was the live bridge
            assert consumers.seen, "no consumer sample taken during m1"
            others = [
                tags for tags in consumers.seen if any(not t.startswith(LIVE_TAG) for t in tags)
            ]
            assert not others, f"other consumers on the legacy queue during m1: {others[:3]}"

            # every transition recorded, newest first
            history = TransitionLog(session, s.cassandra).history()
            got = [
                (h["kind"], h["from_stage"], h["to_stage"], h["state"], h["forced"])
                for h in history
            ]
            assert got == [
                ("advance", "shadow", "m1", "done", True),
                ("rollback", "m1", "shadow", "done", False),
                ("advance", "shadow", "m1", "done", True),
                ("advance", "legacy", "shadow", "done", False),
            ], got
            assert history[0]["reason"] == "again" and history[2]["reason"] == "pre-mirror events"
            assert all(h["who"] and h["host"] for h in history)

            # back to legacy: leaving shadow removes what entering it started
            cutover(s, "rollback", "--yes")
            cutover(s, "rollback", "--yes")
            doc = status(s)
            assert doc["stage"] == "legacy" and doc["healthy"] and doc["components"], doc
            assert [c["component"] for c in doc["components"]] == ["legacy queue consumers"]
            from abacus import manager
            from bridge import manage
            from bridge.rabbit import queue_depth

            assert not any(manage.status(s, n)["running"] for n in ("live", "shadow"))
            running = [j.name for j in manager.statuses(s) if j.status in manager.RUNNING]
            assert not running, running
            assert queue_depth(s.rabbitmq, s.rabbitmq.shadow_queue) is None  # mirror removed
            expect_reads(s, "legacy", *who)
        finally:
            session.cluster.shutdown()
    finally:
        traffic.stop.set()
        consumers.close()
        serve.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            serve.wait(30)
        worker.stop()


def _answers(s: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.serve.port}/health", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False
