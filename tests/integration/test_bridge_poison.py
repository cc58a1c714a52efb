"""Poison on the real RabbitMQ and Kafka: a running bridge takes every AMQP-level poison
message (tests/poison_amqp.py) and every poison event line (counting.corpus.poison_lines,
as a Celery task and as a plain JSON message), forwards each good one exactly once and
dead-letters each bad one with its reason, and is still running afterwards, on its first
connection, with the queue empty (issue 12: one message of invalid UTF-8 used to kill it,
and the restarted bridge met the same message first)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.decode import MAX_BODY_BYTES, MAX_EVENT_BYTES, Good, Incoming, decode
from bridge.service import Bridge
from bridge.status import read_status
from counting.corpus import poison_lines
from settings.model import Settings
from tests import poison_amqp
from tests.integration.bridge_env import REPO, Env, headers_of, isolated, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def isolated_env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[Env]:
    """Its own exchange, queues and topics."""
    with isolated(settings, tmp_path / "data") as env:
        yield env


FORWARD = poison_amqp.FORWARD
BRIDGE_RUN = (sys.executable, "-m", "bridge", "run")


def _wait(env: Env, cond: Any, timeout_s: float, what: Any) -> None:
    """Wait for `cond`; on timeout fail with what was observed (`what()`). The test's own
    connection is used once a second meanwhile, so that the broker does not close it for
    missed heartbeats during a long wait."""
    deadline = time.monotonic() + timeout_s
    touched = time.monotonic()
    while not cond():
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s: {what()}")
        if now - touched > 1.0:
            env.depth(env.rmq.legacy_queue)
            touched = now
        time.sleep(0.05)


def test_a_running_bridge_survives_the_whole_poison_corpus(isolated_env: Env) -> None:
    env = isolated_env
    rmq = env.rmq
    # (frames, identity, expected outcome, forwarded event bytes, escaped)
    sent: list[tuple[bytes, tuple[str, bytes], str, bytes, bool]] = []
    for m in poison_amqp.messages():
        frames = env.conn.publish_frames(
            m.body, rmq.exchange, rmq.routing_key, encoded_properties=m.properties
        )
        sent.append((frames, ("body", m.body), m.expect, m.event, m.escaped))
    for i, (_, raw) in enumerate(poison_lines()):
        task_id = f"T-line-{i}"
        try:
            raw.decode("utf-8")
            celery = FORWARD if len(raw) <= MAX_EVENT_BYTES else "too_large"
        except UnicodeDecodeError:
            celery = "bad_envelope"  # travels as lone surrogates, which cannot be forwarded
        frames = env.conn.publish_frames(
            poison_amqp.celery_body(raw),
            rmq.exchange,
            rmq.routing_key,
            encoded_properties=poison_amqp.celery_properties(task_id),
        )
        sent.append((frames, ("task_id", task_id.encode()), celery, raw, False))
        # a plain JSON message: forwarded if it parses as JSON (the contract is Abacus's
        # to apply), else broken_json, or too_large over 1 MiB: what `decode` says
        message_id = f"M-line-{i}"
        props = {"content_type": "application/json", "message_id": message_id}
        local = decode(Incoming(raw, props), 0)
        plain = FORWARD if isinstance(local, Good) else local.reason.value
        assert plain in (FORWARD, "broken_json", "too_large")
        frames = env.conn.publish_frames(raw, rmq.exchange, rmq.routing_key, props)
        sent.append((frames, ("message_id", message_id.encode()), plain, raw, False))
    for i in range(0, len(sent), 20):
        env.conn.send_raw(b"".join(f for f, *_ in sent[i : i + 20]))
    env.conn.wait_for_confirms(timeout=120)  # the frames were numbered when built
    total = len(sent)
    assert env.depth(rmq.legacy_queue) == total

    b = Bridge(env.settings, "live")
    thread = threading.Thread(target=b.run, daemon=True)
    thread.start()
    try:
        _wait(
            env,
            lambda: b.counts.acked >= total or not thread.is_alive(),
            180,
            lambda: (
                f"{b.counts.snapshot()} of {total} published, in flight {b.in_flight()}, "
                f"queue depth {env.depth(rmq.legacy_queue)}, last error {b._last_error!r}"
            ),
        )
        assert thread.is_alive(), f"the bridge stopped: last error {b._last_error!r}"
        _wait(
            env,
            lambda: env.depth(rmq.legacy_queue) == 0,
            30,
            lambda: f"queue depth {env.depth(rmq.legacy_queue)}, {b.counts.snapshot()}",
        )
        assert b.counts.reconnects == 0, f"the bridge reconnected: {b._last_error!r}"
        assert b.counts.acked == total and b.counts.redelivered == 0
    finally:
        b.stop()
        thread.join(60)
    assert not thread.is_alive()

    good = [s for s in sent if s[2] == FORWARD]
    bad = [s for s in sent if s[2] != FORWARD]
    events = read_topic(env.settings, env.settings.kafka.topic, len(good))
    dlq = read_topic(env.settings, env.settings.kafka.dlq_topic, len(bad))
    assert (len(events), len(dlq)) == (len(good), len(bad))

    # every good one forwarded exactly once, byte for byte
    got: Counter[tuple[str, bytes]] = Counter()
    for r in events:
        h = headers_of(r)
        key = ("task_id", h["task_id"]) if h.get("task_id", b"").startswith(b"T-line-") else None
        if key is None and h.get("message_id", b"").startswith(b"M-line-"):
            key = ("message_id", h["message_id"])
        got[key or ("event", r.value())] += 1
    want: Counter[tuple[str, bytes]] = Counter()
    for _, ident, _, event, _ in good:
        want[ident if ident[0] != "body" else ("event", event)] += 1
    assert got == want
    values = {(headers_of(r).get("task_id"), r.value()) for r in events}
    for _, ident, _, event, _ in good:
        if ident[0] == "task_id":
            assert (ident[1], event) in values, ident

    # every bad one dead-lettered once, with its reason (AMQP poison found by its body)
    by_body = {r.value(): r for r in dlq}
    reasons: Counter[tuple[tuple[str, bytes], str]] = Counter()
    for r in dlq:
        h = headers_of(r)
        if h.get("task_id", b"").startswith(b"T-line-"):
            ident = ("task_id", h["task_id"])
        elif h.get("message_id", b"").startswith(b"M-line-"):
            ident = ("message_id", h["message_id"])
        else:
            ident = ("body", r.value())
        reasons[(ident, h["reason"].decode())] += 1
    want_reasons = Counter(
        ((kind, value[:MAX_BODY_BYTES] if kind == "body" else value), reason)
        for _, (kind, value), reason, _, _ in bad
    )  # a dead letter keeps the first 4 MiB of a body
    assert reasons == want_reasons
    for _, ident, _, _, escaped in bad:
        if ident[0] == "body" and ident[1][:MAX_BODY_BYTES] in by_body:
            record = by_body[ident[1][:MAX_BODY_BYTES]]
            assert (headers_of(record).get("escaped") == b"1") is escaped, ident
    c = b.counts
    assert (c.produced, c.dead_lettered) == (len(good), len(bad))
    print(
        f"poison: {len(good)} forwarded, {len(bad)} dead-lettered, "
        f"{dict(c.dead_lettered_by_reason)}"
    )


def test_bridge_run_keeps_running_on_the_messages_that_killed_it(
    isolated_env: Env, tmp_path: Path
) -> None:
    """Issue 12's scenario as a user runs it: `abacus bridge run --mode shadow` (the
    process, not a thread) meets a `message_id` and a `content_type` of invalid UTF-8 and a
    header table nested 3,000 levels, between good messages; it goes on running."""
    env = isolated_env
    rmq = env.rmq
    names = {
        "message_id of invalid UTF-8": FORWARD,
        "content_type of invalid UTF-8": "content_type",
        "a header table nested 3,000 levels before the task header": "bad_headers",
    }
    poison = [m for m in poison_amqp.messages() if m.name in names]
    assert [m.expect for m in poison] == list(names.values())
    frames = []
    for i, m in enumerate(poison):
        good = poison_amqp.celery_body(f'{{"event_id": "good-{i}", "company_id": "C"}}')
        props = poison_amqp.celery_properties(f"T-good-{i}")
        for body, p in ((m.body, m.properties), (good, props)):
            frames.append(
                env.conn.publish_frames(body, rmq.exchange, rmq.routing_key, encoded_properties=p)
            )
    env.conn.send_raw(b"".join(frames))
    env.conn.wait_for_confirms(timeout=60)
    total = len(frames)
    assert env.depth(rmq.shadow_queue) == total

    status_file = tmp_path / "shadow.json"
    proc = subprocess.Popen(
        [*BRIDGE_RUN, "--mode", "shadow", "--status-file", str(status_file)],
        cwd=REPO,
        env={
            **env.env_vars(),
            "ABACUS_RABBITMQ__MIRROR_OVERFLOW_QUEUE": rmq.mirror_overflow_queue,
        },
        stderr=subprocess.PIPE,
    )

    def status() -> dict[str, Any]:
        return read_status(status_file) or {"totals": {}, "in_flight": -1}

    try:
        _wait(
            env,
            lambda: (
                proc.poll() is not None
                or (status()["totals"].get("acked", 0) >= total and status()["in_flight"] == 0)
            ),
            120,
            lambda: f"status {status()}, exit code {proc.poll()}",
        )
        assert proc.poll() is None, f"the bridge exited {proc.returncode}"
        _wait(env, lambda: env.depth(rmq.shadow_queue) == 0, 30, status)
        s = status()
        assert s["totals"]["produced"] == total - 2
        assert s["dead_lettered_by_reason"] == {"content_type": 1, "bad_headers": 1}
        assert s["totals"]["reconnects"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
