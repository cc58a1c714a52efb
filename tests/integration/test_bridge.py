"""The bridge on real RabbitMQ and Kafka: every event once, crash safety, bad input,
shadow vs live, reconnects, counts. Each test has its own exchange, queues and topics."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from bridge import rabbit
from bridge.decode import MAX_BODY_BYTES, MAX_EVENT_BYTES, MAX_TASK_BODY_BYTES
from bridge.service import Bridge
from bridge.status import read_status
from counting.corpus import tricky_lines
from settings.model import Settings
from tests.integration.bridge_env import (
    REPO,
    Env,
    celery_message,
    event,
    headers_of,
    isolated,
    read_topic,
)
from wire.task import TASK_NAME, task_message

pytestmark = pytest.mark.integration


@pytest.fixture
def env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    with isolated(settings, tmp_path / "data") as e:
        yield e


def run_in_thread(b: Bridge) -> threading.Thread:
    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    return t


def finish(thread: threading.Thread, b: Bridge, timeout_s: float = 180) -> None:
    """The bridge's thread ended by itself (its should_stop), within `timeout_s`."""
    thread.join(timeout_s)
    assert not thread.is_alive(), (
        f"bridge still running after {timeout_s:.0f}s: {b.counts.snapshot()}, "
        f"in flight {b.in_flight()}, last error {b._last_error!r}"
    )


def wait_for(cond: Any, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the tests


def test_shadow_every_event_once_with_key_and_headers(env: Env) -> None:
    lines = [event(i) for i in range(1500)] + tricky_lines()
    lines = [ln for ln in lines if len(ln.encode()) <= MAX_EVENT_BYTES]
    ids = [f"T{i}" for i in range(len(lines))]
    env.publish([celery_message(ln, tid) for ln, tid in zip(lines, ids, strict=True)])
    plain = event(99999)
    env.publish([(plain.encode(), {"content_type": "application/json", "message_id": "M-plain"})])
    total = len(lines) + 1

    port = free_port()
    b = Bridge(env.settings, "shadow", metrics_port=port, should_stop=lambda c: c.acked >= total)
    thread = run_in_thread(b)
    wait_for(lambda: b.counts.acked >= total // 2, what="half the messages acked")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b'abacus_bridge_acked_total{mode="shadow"}' in metrics
    finish(thread, b)

    records = read_topic(env.settings, env.settings.kafka.topic, total)
    assert len(records) == total
    by_task = {headers_of(r).get("task_id", b"").decode(): r for r in records}
    for line, tid in zip(lines, ids, strict=True):
        r = by_task[tid]
        assert r.value() == line.encode()
        obj: Any
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # the corpus nests one line past any parser
            obj = None
        company = obj.get("company_id") if isinstance(obj, dict) else None
        assert r.key() == (company.encode() if isinstance(company, str) else b"")
        h = headers_of(r)
        assert h["routing_key"] == env.rmq.routing_key.encode()
        assert h["exchange"] == env.rmq.exchange.encode()
        assert h["content_type"] == b"application/json"
        assert h["redelivered"] == b"false"
        assert int(h["bridge_received_ms"]) > 0
    plain_rec = [r for r in records if headers_of(r).get("message_id") == b"M-plain"]
    assert [r.value() for r in plain_rec] == [plain.encode()]
    assert plain_rec[0].key() == b"COM4"

    c = b.counts
    assert (c.consumed, c.produced, c.acked, c.dead_lettered) == (total, total, total, 0)
    # shadow leaves the legacy queue's contents untouched, and drained its own queue
    assert env.depth(env.rmq.legacy_queue) == total
    assert env.depth(env.rmq.shadow_queue) == 0

    # the status command shows the same counts (the run is over: exit 3 "not running")
    status_file = env.settings.services.data_dir / "bridge" / "shadow.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "status",
            "--mode",
            "shadow",
            "--format",
            "json",
            "--status-file",
            str(status_file),
            "--no-probe",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env.env_vars(),
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["totals"]["acked"] == total and doc["totals"]["produced"] == total
    assert sum(row["consumed"] for row in doc["per_minute"]) == total
    assert doc["stopped"] is True


def test_live_mode_drains_the_legacy_queue(env: Env) -> None:
    n = 1000
    env.publish([celery_message(event(i)) for i in range(n)])
    assert env.depth(env.rmq.legacy_queue) == n
    b = Bridge(env.settings, "live", should_stop=lambda c: c.acked >= n)
    finish(run_in_thread(b), b)
    assert env.depth(env.rmq.legacy_queue) == 0
    assert env.depth(env.rmq.shadow_queue) == n  # the mirror queue is not live mode's
    assert len(read_topic(env.settings, env.settings.kafka.topic, n)) == n


def test_bad_messages_are_dead_lettered_and_good_ones_still_arrive(env: Env) -> None:
    good = [celery_message(event(i), f"G{i}") for i in range(40)]
    m = task_message(event(0), task_id="B")
    props = {**m.properties, "headers": m.headers}
    bad: list[tuple[str, bytes, dict[str, Any]]] = [
        (
            "pickle",
            b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.",
            {**props, "content_type": "application/x-python-serialize"},
        ),
        ("content_type", m.body, {**props, "content_type": "application/x-yaml"}),
        ("content_type", b"hello", {}),
        ("broken_json", m.body[:-7], props),
        ("broken_json", b'{"event_id": ', {"content_type": "application/json"}),
        ("unknown_task", m.body, {**props, "headers": {**m.headers, "task": "other.task"}}),
        ("bad_envelope", b'[["a", "b"], {}, {}]', props),
        (
            "bad_envelope",
            json.dumps({"task": TASK_NAME, "id": "x", "args": ["{}"]}).encode(),
            {"content_type": "application/json"},
        ),
        ("bad_encoding", m.body, {**props, "content_encoding": "binary"}),
        ("too_large", celery_message(json.dumps({"pad": "x" * MAX_EVENT_BYTES}))[0], props),
        ("oversized_body", b"[" + b" " * MAX_TASK_BODY_BYTES + b"]", props),
    ]
    messages: list[tuple[bytes, dict[str, Any]]] = []
    for i, (_, body, p) in enumerate(bad):  # interleave: good, bad, good, bad, ...
        messages += [good[i], (body, p)]
    messages += good[len(bad) :]
    env.publish(messages)
    total = len(messages)

    b = Bridge(env.settings, "live", should_stop=lambda c: c.acked >= total)
    finish(run_in_thread(b), b)
    assert env.depth(env.rmq.legacy_queue) == 0

    dlq = read_topic(env.settings, env.settings.kafka.dlq_topic, len(bad))
    assert len(dlq) == len(bad)
    got = sorted(
        (headers_of(r)["reason"].decode(), len(r.value()), int(headers_of(r)["original_size"]))
        for r in dlq
    )
    want = sorted((reason, min(len(body), MAX_BODY_BYTES), len(body)) for reason, body, _ in bad)
    assert got == want
    for r in dlq:  # the original bytes, untouched (oversized: its first 4 MiB)
        h = headers_of(r)
        assert h["detail"]
        originals = [
            body[:MAX_BODY_BYTES] for reason, body, _ in bad if reason == h["reason"].decode()
        ]
        assert r.value() in originals
    events = read_topic(env.settings, env.settings.kafka.topic, len(good))
    assert sorted(headers_of(r)["task_id"] for r in events) == sorted(
        f"G{i}".encode() for i in range(len(good))
    )
    c = b.counts
    assert c.dead_lettered == len(bad) and c.produced == len(good) and c.acked == total
    assert c.dead_lettered_by_reason == dict(Counter(reason for reason, _, _ in bad))


def test_reconnect_drops_stale_delivery_tags_and_loses_nothing(env: Env) -> None:
    n = 6000
    env.publish([celery_message(event(i), f"T{i}") for i in range(n)])
    b = Bridge(env.settings, "live", should_stop=lambda c: c.acked >= n)
    thread = run_in_thread(b)
    wait_for(lambda: b.counts.acked >= 1000, what="1000 acks")
    conn = b._conn
    assert conn is not None and conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)  # the broker connection drops mid-stream
    wait_for(lambda: b.counts.reconnects >= 1, what="a reconnect")
    finish(thread, b)
    assert b.counts.reconnects == 1  # no crash loop on stale delivery tags
    assert env.depth(env.rmq.legacy_queue) == 0
    records = read_topic(env.settings, env.settings.kafka.topic, n)
    ids = Counter(headers_of(r)["task_id"] for r in records)
    assert set(ids) == {f"T{i}".encode() for i in range(n)}
    assert len(records) - n <= b.counts.redelivered


def _spawn(env: Env, status_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "run",
            "--mode",
            "live",
            "--prefetch",
            "500",
            "--status-file",
            str(status_file),
        ],
        cwd=REPO,
        env=env.env_vars(),
        stderr=subprocess.PIPE,
    )


def _status(path: Path) -> dict[str, Any]:
    return read_status(path) or {"totals": {"acked": 0}, "in_flight": -1}


def test_sigkill_mid_stream_loses_nothing_and_counts_duplicates(env: Env, tmp_path: Path) -> None:
    n = 20000
    env.publish([celery_message(event(i), f"T{i}") for i in range(n)])
    first = tmp_path / "first.json"
    proc = _spawn(env, first)
    try:
        # the broker's ready count, polled: the status file ticks once a second, and an idle
        # machine bridges all 20,000 in about that time
        wait_for(lambda: env.depth(env.rmq.legacy_queue) <= n - 3000, 120, "3000 deliveries")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    wait_for(
        lambda: env.conn.queue_declare(env.rmq.legacy_queue, passive=True)[2] == 0,
        30,
        "the broker to notice the dead consumer",
    )
    left = env.depth(env.rmq.legacy_queue)
    assert 0 < left < n, "killed mid-stream"

    second = tmp_path / "second.json"
    proc = _spawn(env, second)
    try:
        wait_for(
            lambda: (
                env.depth(env.rmq.legacy_queue) == 0
                and _status(second)["in_flight"] == 0
                and _status(second)["totals"]["acked"] >= left
            ),
            120,
            "the queue drained",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    final = read_status(second)
    assert final is not None and final["stopped"]

    records = read_topic(env.settings, env.settings.kafka.topic, n)
    ids = Counter(headers_of(r)["task_id"] for r in records)
    assert set(ids) == {f"T{i}".encode() for i in range(n)}, "an event was lost"
    duplicates = len(records) - n
    # each duplicate is a record of a message the broker redelivered after the kill
    assert duplicates <= final["totals"]["redelivered"]
    assert final["totals"]["acked"] == left
    print(
        f"SIGKILL: {n} events, {duplicates} duplicates, "
        f"{final['totals']['redelivered']} redelivered"
    )


def test_sigterm_flushes_acks_and_leaves_the_rest(env: Env, tmp_path: Path) -> None:
    n = 8000
    env.publish([celery_message(event(i), f"T{i}") for i in range(n)])
    status_file = tmp_path / "s.json"
    proc = _spawn(env, status_file)
    try:
        wait_for(lambda: _status(status_file)["totals"]["acked"] >= 1000, 120, "1000 acks")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    final = read_status(status_file)
    assert final is not None
    acked = final["totals"]["acked"]
    assert final["totals"]["produced"] == acked  # nothing confirmed was left unacked
    assert env.depth(env.rmq.legacy_queue) == n - acked  # the rest stayed in the queue
    records = read_topic(env.settings, env.settings.kafka.topic, acked, timeout_s=20)
    assert len(records) == acked


# ---------------------------------------------------------------- the bounded mirror queue
# (issue 12: a stopped bridge must never fill RabbitMQ up to the memory alarm that blocks
# legacy's publishers; what the mirror drops is counted per event date)

DAY_A, DAY_B = "2018-12-07", "2018-12-08"
TS_A = 1544153562  # 2018-12-07T03:32:42Z
BRIDGE = (sys.executable, "-m", "bridge")


def dated_event(i: int, ts: int) -> str:
    return json.dumps(
        {
            "event_id": f"O{i}",
            "company_id": f"COM{i % 3}",
            "customer_id": f"CUS{i % 7}",
            "statistic_id": "opened",
            "timestamp": ts,
        }
    )


@pytest.fixture
def bounded(env: Env) -> Iterator[Env]:
    """`env` with a small mirror (100 messages) and its own ops keyspace for the counts."""
    import storage

    u = uuid.uuid4().hex[:8]
    s = env.settings
    rmq = s.rabbitmq.model_copy(update={"mirror_max_length": 100})
    cas = s.cassandra.model_copy(update={"keyspace_prefix": f"test_{u}_"})
    bounded_settings = s.model_copy(update={"rabbitmq": rmq, "cassandra": cas})
    # the fixture declared the mirror with the default bound: declare it again with ours
    env.conn.queue_delete(rmq.shadow_queue)
    env.conn.queue_delete(rmq.mirror_overflow_queue)
    rabbit.declare_shadow_queue(env.conn, rmq)
    storage.apply_schema(cas, ["legacy", "shadow", storage.OPS])
    yield Env(bounded_settings, env.conn)
    session = storage.connect(cas)
    try:
        for name in ("legacy", "shadow", storage.OPS):
            session.execute(
                f"DROP KEYSPACE IF EXISTS {storage.keyspace_of(cas, name)}", timeout=120
            )
    finally:
        session.cluster.shutdown()


def _bounded_env_vars(env: Env) -> dict[str, str]:
    s = env.settings
    return {
        **env.env_vars(),
        "ABACUS_RABBITMQ__MIRROR_MAX_LENGTH": str(s.rabbitmq.mirror_max_length),
        "ABACUS_RABBITMQ__MIRROR_OVERFLOW_QUEUE": s.rabbitmq.mirror_overflow_queue,
        "ABACUS_CASSANDRA__KEYSPACE_PREFIX": s.cassandra.keyspace_prefix,
    }


def test_mirror_overflow_never_blocks_legacy_and_is_counted_per_date(
    bounded: Env, tmp_path: Path
) -> None:
    env = bounded
    rmq = env.rmq
    pickle = (b"\x80\x04K\x01.", {"content_type": "application/x-python-serialize"})
    # with the bridge stopped: 1 undecodable, 50 events of day A, 130 of day B (oldest first)
    messages = [pickle]
    messages += [celery_message(dated_event(i, TS_A + i)) for i in range(50)]
    messages += [celery_message(dated_event(50 + i, TS_A + 86400 + i)) for i in range(130)]
    env.publish(messages)  # publisher confirms: raises if the broker nacked any message
    assert not env.conn.blocked  # no connection.blocked from a resource alarm either
    total = len(messages)

    assert env.depth(rmq.legacy_queue) == total  # legacy got every message
    assert env.depth(rmq.shadow_queue) == rmq.mirror_max_length  # the mirror kept the newest
    # dropped from the head: the pickle, all 50 of day A, the first 30 of day B (fewer than
    # the overflow queue's own bound, so every one of them is counted)
    dropped = total - rmq.mirror_max_length
    assert dropped == 81
    wait_for(
        lambda: env.depth(rmq.mirror_overflow_queue) == dropped, 30, "the dead-lettered overflow"
    )

    status_file = tmp_path / "shadow.json"
    proc = subprocess.Popen(
        [*BRIDGE, "run", "--mode", "shadow", "--status-file", str(status_file)],
        cwd=REPO,
        env=_bounded_env_vars(env),
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: (
                _status(status_file)["totals"].get("mirror_overflow") == dropped
                and _status(status_file)["totals"]["acked"] == rmq.mirror_max_length
            ),
            120,
            "the overflow counted and the mirror bridged",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert env.depth(rmq.mirror_overflow_queue) == 0
    assert env.depth(rmq.legacy_queue) == total  # shadow mode never touched it
    records = read_topic(env.settings, env.settings.kafka.topic, rmq.mirror_max_length)
    assert len(records) == rmq.mirror_max_length  # the newest 100: day B's last 100
    assert {r.value() for r in records} == {
        dated_event(50 + i, TS_A + 86400 + i).encode() for i in range(30, 130)
    }

    done = subprocess.run(
        [
            *BRIDGE,
            "status",
            "--mode",
            "shadow",
            "--format",
            "json",
            "--status-file",
            str(status_file),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_bounded_env_vars(env),
        timeout=120,
    )
    assert done.returncode == 3, done.stderr  # the run is over
    doc = json.loads(done.stdout)
    assert doc["totals"]["mirror_overflow"] == dropped
    assert doc["totals"]["mirror_overflow_redelivered"] == 0
    assert doc["totals"]["overflow_full"] == 0
    assert doc["overflow_queue_depth"] == {"ready": 0}
    assert doc["mirror_overflow_by_date"] == {
        DAY_A: {"messages": 50, "redelivered": 0},
        DAY_B: {"messages": 30, "redelivered": 0},
        "undated": {"messages": 1, "redelivered": 0},
    }

    # the audit of each date names its overflow (the stores are empty here: only the count)
    from compare.audit import RunOptions, run_audit
    from compare.report import headline, render

    options = RunOptions(work_dir=tmp_path / "audits", settle_s=0.1)
    for date, n in ((DAY_A, 50), (DAY_B, 30), ("2018-12-09", 0)):
        result = run_audit(env.settings, date, "legacy", "shadow", options=options)
        assert result.summary["mirror_overflow"] == {"messages": n, "redelivered": 0}
        if n:
            assert f"{n} mirror overflows on this date" in headline(result)
        else:
            assert "mirror overflow" not in headline(result)
        out = tmp_path / f"{date}.json"
        with out.open("w") as stream:
            render(result, "json", stream)
        assert json.loads(out.read_text())["summary"]["mirror_overflow"]["messages"] == n


def test_reject_publish_would_nack_the_legacy_publisher(env: Env) -> None:
    """Why the mirror drops its head instead of rejecting: a full reject-publish queue bound
    beside the legacy queue makes RabbitMQ nack the publisher (with confirms), although the
    legacy queue took the message."""
    from bridge.amqp091 import AmqpError

    u = uuid.uuid4().hex[:8]
    probe = f"test.{u}.reject"
    env.conn.queue_declare(
        probe, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}, auto_delete=False
    )
    try:
        env.conn.queue_bind(probe, env.rmq.exchange, env.rmq.routing_key)
        env.publish([celery_message(event(0))])
        with pytest.raises(AmqpError, match="refused 1"):
            env.publish([celery_message(event(1))])
        assert env.depth(env.rmq.legacy_queue) == 2
    finally:
        env.conn.queue_delete(probe)


def test_an_unbounded_mirror_from_before_is_a_clear_error(env: Env, tmp_path: Path) -> None:
    rmq = env.rmq
    env.conn.queue_delete(rmq.shadow_queue)
    env.conn.queue_declare(rmq.shadow_queue, durable=True, auto_delete=False)  # no bound
    env.conn.queue_bind(rmq.shadow_queue, rmq.exchange, rmq.routing_key)
    env.publish([celery_message(event(i)) for i in range(5)])
    done = subprocess.run(
        [*BRIDGE, "run", "--mode", "shadow", "--status-file", str(tmp_path / "s.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env.env_vars() | {"ABACUS_RABBITMQ__MIRROR_OVERFLOW_QUEUE": rmq.mirror_overflow_queue},
        timeout=120,
    )
    assert done.returncode == 1
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, done.stderr[-2000:]
    assert repr(rmq.shadow_queue) in lines[0] and "mirror-upgrade" in lines[0]
    assert "Traceback" not in done.stderr
    # nothing was lost or changed: the old queue still holds its messages
    assert env.depth(rmq.shadow_queue) == 5 and env.depth(rmq.legacy_queue) == 5


def test_topics_are_created_with_min_insync_replicas(env: Env) -> None:
    from confluent_kafka.admin import ConfigResource, ConfigSource

    from bridge.kafka import ensure_topics

    kafka = env.settings.kafka
    assert ensure_topics(kafka, [kafka.topic]) == [kafka.topic]
    admin = AdminClient(kafka.client_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, kafka.topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    entry = configs["min.insync.replicas"]
    assert entry.value == str(kafka.min_insync_replicas)
    # set on the topic at creation, not the broker's default showing through
    assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_mirror_upgrade_counts_the_backlog_and_bounds_the_queue(bounded: Env) -> None:
    import storage
    from storage.cassandra import Prepared
    from storage.overflow import Overflow, OverflowStore

    env, rmq = bounded, bounded.rmq
    env.conn.queue_delete(rmq.shadow_queue)
    env.conn.queue_declare(rmq.shadow_queue, durable=True, auto_delete=False)  # no bound
    env.conn.queue_bind(rmq.shadow_queue, rmq.exchange, rmq.routing_key)
    env.publish([celery_message(dated_event(i, TS_A + i)) for i in range(20)])
    env.publish([celery_message(dated_event(20 + i, TS_A + 86400 + i)) for i in range(10)])

    def upgrade(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BRIDGE, "mirror-upgrade", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=_bounded_env_vars(env),
            timeout=120,
        )

    shown = upgrade()  # without --yes: says what it would do, changes nothing
    assert shown.returncode == 0 and "would replace" in shown.stdout, shown.stderr
    assert env.depth(rmq.shadow_queue) == 30

    consumer = rabbit.connect(rmq)  # a running bridge: refused
    try:
        consumer.basic_qos(0, 1, False)
        consumer.basic_consume(rmq.shadow_queue)
        refused = upgrade("--yes")
    finally:
        consumer.close()
    assert refused.returncode == 1 and "stop the shadow bridge" in refused.stderr
    wait_for(lambda: env.depth(rmq.shadow_queue) == 30, 30, "the unacked message back")

    done = upgrade("--yes")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "30 message(s)" in done.stdout
    rabbit.declare_shadow_queue(env.conn, rmq)  # the bounded arguments are accepted now
    assert env.depth(rmq.shadow_queue) == 0 and env.depth(rmq.legacy_queue) == 30
    session = storage.connect(env.settings.cassandra)
    try:
        counted = OverflowStore(Prepared(session), env.settings.cassandra).all()
    finally:
        session.cluster.shutdown()
    # the message the refused run's consumer held came back flagged redelivered
    assert counted == {DAY_A: Overflow(20, 1), DAY_B: Overflow(10, 0)}

    # the overflow queue was unbound again: a new event goes to the legacy queue and the
    # mirror only; and a second upgrade has nothing to do
    env.publish([celery_message(event(0))])
    assert env.depth(rmq.shadow_queue) == 1 and env.depth(rmq.legacy_queue) == 31
    assert env.depth(rmq.mirror_overflow_queue) == 0
    again = upgrade("--yes")
    assert again.returncode == 0 and "0 message(s)" in again.stdout, again.stderr


def test_a_full_overflow_queue_is_reported_as_a_lower_bound(bounded: Env) -> None:
    from bridge.overflow import OverflowDrainer
    from bridge.status import Counts

    env, rmq = bounded, bounded.rmq
    n = 2 * rmq.mirror_max_length + 50  # the mirror keeps 100, the overflow queue 100
    env.publish([celery_message(dated_event(i, TS_A + i)) for i in range(n)])
    assert env.depth(rmq.legacy_queue) == n
    wait_for(lambda: env.depth(rmq.mirror_overflow_queue) == rmq.mirror_max_length, 30, "overflow")

    class Store:
        def __init__(self) -> None:
            self.added: list[dict[str, Any]] = []

        def add(self, counts: dict[str, Any]) -> None:
            self.added.append(counts)

    store = Store()
    counts = Counts()
    drainer = OverflowDrainer(env.settings, counts, store_factory=lambda: store).start()
    try:
        wait_for(lambda: counts.mirror_overflow == rmq.mirror_max_length, 60, "the drain")
    finally:
        drainer.stop()
    assert counts.overflow_full == 1  # seen full once: 50 were dropped uncounted
    assert sum(c[DAY_A].messages for c in store.added) == rmq.mirror_max_length
    assert "overflow queue full" in drainer.last_error
    assert env.depth(rmq.mirror_overflow_queue) == 0


class _BrokenProducer:
    """A real producer that, once broken, acts as librdkafka does after a broker restart
    went wrong: `fatal` (an idempotence fatal error: `error_cb` told, queued records purged,
    every produce() raises `_FATAL`), `fatal-silent` (the same without `error_cb`: only
    produce() and the delivery reports say so), `wedged` (records accepted, never delivered,
    never timed out)."""

    def __init__(self, real: Any, error_cb: Any, how: str) -> None:
        self.real, self.error_cb, self.how = real, error_cb, how
        self.broken = False
        self.swallowed = 0

    def break_(self) -> None:
        self.broken = True
        if self.how != "wedged":
            self.real.purge()  # what librdkafka does with the queues on a fatal error

    def produce(self, *args: Any, **kwargs: Any) -> None:
        if not self.broken:
            self.real.produce(*args, **kwargs)
        elif self.how == "wedged":
            self.swallowed += 1
        else:
            raise KafkaException(KafkaError(KafkaError._FATAL, "injected fatal error"))

    def poll(self, timeout: float = 0) -> int:
        served = self.real.poll(timeout)
        if self.broken and self.how == "fatal" and self.error_cb is not None:
            cb, self.error_cb = self.error_cb, None
            cb(KafkaError(KafkaError._FATAL, "injected: sequence desynchronized", fatal=True))
        return int(served)

    def __len__(self) -> int:
        return len(self.real) + self.swallowed

    def flush(self, timeout: float = -1) -> int:
        return int(self.real.flush(timeout)) + self.swallowed

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self.real.purge(*args, **kwargs)


@pytest.mark.parametrize("how", ["fatal", "fatal-silent", "wedged"])
def test_a_failed_or_wedged_producer_is_replaced_and_nothing_is_lost(
    env: Env, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """After a Kafka restart the idempotent producer can fail fatally (confluent_kafka marks
    that fatal only in error_cb) or stop delivering: the bridge replaces it, RabbitMQ
    redelivers what was unacked, and every message reaches the topic."""
    import bridge.kafka
    import bridge.service as service

    n = 3000
    env.publish([celery_message(event(i), f"T{i}") for i in range(n)])
    made: list[Any] = []
    real_make = bridge.kafka.make_producer

    def make(kafka: Any, **conf: Any) -> Any:
        p: Any = real_make(kafka, **conf)
        if not made:
            p = _BrokenProducer(p, conf.get("error_cb"), how)
        made.append(p)
        return p

    monkeypatch.setattr(service, "make_producer", make)
    # the wedge is noticed after message.timeout.ms + 10 s: a short timeout keeps it quick
    b = Bridge(
        env.settings,
        "live",
        should_stop=lambda c: c.acked >= n,
        producer_overrides={"message.timeout.ms": 3000},
    )
    thread = run_in_thread(b)
    wait_for(lambda: b.counts.acked >= 500, what="500 acks")
    made[0].break_()
    finish(thread, b, timeout_s=120)
    assert b.producers == 2 and len(made) == 2, (b.producers, b._last_error)
    assert env.depth(env.rmq.legacy_queue) == 0
    records = read_topic(env.settings, env.settings.kafka.topic, n)
    ids = Counter(headers_of(r)["task_id"] for r in records)
    assert set(ids) == {f"T{i}".encode() for i in range(n)}
    assert b.counts.redelivered > 0 and len(records) - n <= b.counts.redelivered
    assert b.counts.dead_lettered == 0
