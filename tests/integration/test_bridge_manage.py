"""The bridge as a managed background component (bridge.manage, `abacus bridge
start|stop|ps|mirror-remove`) on the real servers, each test on its own exchange, queues and
topics (bridge_env.isolated) and its own data directory."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import manage, rabbit
from bridge.rabbit import MirrorQueueMismatch
from services import procs
from services.rabbitmq import BIN, RabbitService
from settings.model import Settings
from tests.integration.bridge_env import REPO, Env, celery_message, event, isolated, read_topic
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def env(settings: Settings, services_up: Any, tmp_path: Path) -> Iterator[Env]:
    with isolated(settings, tmp_path / "data") as e:
        yield e
        for name in manage.names(e.settings):  # never leave a bridge running
            manage.stop(e.settings, name, timeout_s=60)


@pytest.fixture
def ctl(settings: Settings) -> Callable[[str], list[str]]:
    """The consumer tags RabbitMQ lists for a queue (rabbitmqctl, as an operator sees them;
    run against the shared server's node, whose files are under the session's data dir)."""
    svc_env = {**os.environ, **RabbitService(settings).environment()}

    def consumers(queue: str) -> list[str]:
        done = subprocess.run(
            [
                *(str(BIN / "rabbitmqctl"), "list_consumers", "-q", "--formatter", "json"),
                *("-p", settings.rabbitmq.vhost, "queue_name", "consumer_tag"),
            ],
            env=svc_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"rabbitmqctl: {done.returncode} {done.stderr[-500:]}"
        listed = json.loads(done.stdout)
        return sorted(c["consumer_tag"] for c in listed if c["queue_name"] == queue)

    return consumers


def acked(env: Env, name: str, n: int) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        s = manage.status(env.settings, name)
        return s if (s.get("totals") or {}).get("acked", 0) >= n else None

    return probe


def test_shadow_bridge_started_counted_and_stopped_without_loss(
    env: Env, ctl: Callable[[str], list[str]]
) -> None:
    s, rmq, n = env.settings, env.settings.rabbitmq, 300
    first = manage.start(s, "shadow")
    assert not first["already_running"] and first["name"] == "shadow"
    pid = first["pid"]
    assert procs.alive(pid) and os.getsid(pid) == pid  # detached: its own session
    assert first["consumer_tag"].startswith(f"{rabbit.CONSUMER_TAG_PREFIX}shadow-")
    assert first["consumer_tag"].endswith(f"-{pid}")
    assert first["queue"] == rmq.shadow_queue and first["topic"] == s.kafka.topic
    assert ctl(rmq.shadow_queue) == [first["consumer_tag"]]
    assert Path(first["pid_file"]).read_text().strip() == str(pid)

    again = manage.start(s, "shadow")  # idempotent: the same process
    assert again["already_running"] and again["pid"] == pid
    with pytest.raises(manage.BridgeError, match="stop it first"):
        manage.start(s, "shadow", topic=f"{s.kafka.topic}.other")

    env.publish([celery_message(event(i), task_id=f"t{i}") for i in range(n)])
    seen = wait_until(f"{n} messages acked", acked(env, "shadow", n))
    assert seen["running"] and seen["pid"] == pid and seen["connected"]
    assert seen["totals"]["consumed"] >= n and seen["totals"]["produced"] >= n
    assert [b["name"] for b in manage.ps(s)] == ["shadow"]

    stopped = manage.stop(s, "shadow")
    assert stopped["was_running"] and stopped["pid"] == pid
    assert stopped["exit_code"] == 0 and not stopped["killed"] and stopped["stopped_cleanly"]
    assert not procs.alive(pid) and not Path(first["pid_file"]).exists()
    assert env.depth(rmq.shadow_queue) == 0  # every message acked: nothing waits
    records = read_topic(s, s.kafka.topic, n)
    ids = {json.loads(r.value())["event_id"] for r in records}
    assert ids == {f"E{i}" for i in range(n)}
    after = manage.status(s, "shadow")
    assert not after["running"] and after["totals"]["acked"] == n
    assert manage.stop(s, "shadow")["was_running"] is False  # idempotent


def test_live_bridge_from_the_cli_is_the_legacy_queues_only_consumer(
    env: Env, ctl: Callable[[str], list[str]]
) -> None:
    """`abacus bridge start` returns while the bridge runs on (detached); its consumer tag
    names it on the legacy queue; `bridge ps` and `bridge stop` find it by name."""
    s, rmq = env.settings, env.settings.rabbitmq
    topic = f"{s.kafka.topic}.live"
    cli_env = {
        **env.env_vars(),
        "ABACUS_RABBITMQ__MIRROR_OVERFLOW_QUEUE": rmq.mirror_overflow_queue,
    }

    def abacus(*args: str) -> Any:
        return subprocess.run(
            [str(REPO / ".venv/bin/abacus"), "bridge", *args, "--format", "json"],
            env=cli_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    started = abacus("start", "--mode", "live", "--name", "live", "--topic", topic)
    assert started.returncode == 0, started.stderr
    doc = json.loads(started.stdout)
    assert doc["queue"] == rmq.legacy_queue and doc["topic"] == topic
    assert doc["consumer_tag"].startswith(f"{rabbit.CONSUMER_TAG_PREFIX}live-")
    assert procs.alive(doc["pid"])  # outlived the command that started it
    assert ctl(rmq.legacy_queue) == [doc["consumer_tag"]]

    env.publish([celery_message(event(i), task_id=f"t{i}") for i in range(50)])
    wait_until("50 messages acked", acked(env, "live", 50))
    listed = abacus("ps")
    assert listed.returncode == 0, listed.stderr
    (row,) = [b for b in json.loads(listed.stdout) if b["name"] == "live"]
    assert row["running"] and row["consumer_tag"] == doc["consumer_tag"]

    stopped = abacus("stop", "live")
    assert stopped.returncode == 0, stopped.stderr
    result = json.loads(stopped.stdout)
    # not a child of the `stop` command: its clean exit is read from its last status write
    assert result["was_running"] and not result["killed"] and result["stopped_cleanly"]
    assert result["exit_code"] is None and not procs.alive(doc["pid"])
    assert ctl(rmq.legacy_queue) == []
    assert env.depth(rmq.legacy_queue) == 0
    assert len(read_topic(s, topic, 50)) == 50
    gone = abacus("stop", "live")
    assert gone.returncode == 0 and json.loads(gone.stdout)["was_running"] is False


def test_remove_mirror_refused_while_consumed_then_idempotent(env: Env) -> None:
    s, rmq = env.settings, env.settings.rabbitmq
    manage.start(s, "shadow")
    env.publish([celery_message(event(i), task_id=f"t{i}") for i in range(20)])
    wait_until("20 messages acked", acked(env, "shadow", 20))
    with pytest.raises(manage.BridgeError, match="has a consumer"):
        manage.remove_mirror(s)
    assert rabbit.queue_depth(rmq, rmq.shadow_queue) is not None  # still there
    manage.stop(s, "shadow")
    env.publish([celery_message(event(i), task_id=f"u{i}") for i in range(7)])  # left behind
    removed = manage.remove_mirror(s)
    assert removed["deleted"] == {rmq.shadow_queue: 7, rmq.mirror_overflow_queue: 0}
    assert rabbit.queue_depth(rmq, rmq.shadow_queue) is None
    assert rabbit.queue_depth(rmq, rmq.mirror_overflow_queue) is None
    assert env.depth(rmq.legacy_queue) == 27  # legacy's queue untouched
    again = manage.remove_mirror(s)
    assert again["deleted"] == {rmq.shadow_queue: 0, rmq.mirror_overflow_queue: 0}


def test_a_bridge_that_cannot_start_is_stopped_and_said_why(env: Env) -> None:
    s = env.settings
    # an unbounded queue under the mirror's name: refused before any process starts
    mismatched = s.model_copy(
        update={"rabbitmq": s.rabbitmq.model_copy(update={"shadow_queue": f"{s.kafka.topic}.m"})}
    )
    env.conn.queue_declare(mismatched.rabbitmq.shadow_queue, durable=True)
    try:
        with pytest.raises(MirrorQueueMismatch):
            manage.start(mismatched, "shadow", name="mismatched")
        assert manage.status(mismatched, "mismatched")["pid"] is None
        assert not manage.paths(mismatched, "mismatched").pid.exists()
    finally:
        env.conn.queue_delete(mismatched.rabbitmq.shadow_queue)
    # RabbitMQ unreachable: it never consumes; stopped at the deadline, the log's tail shown
    nowhere = s.model_copy(update={"rabbitmq": s.rabbitmq.model_copy(update={"port": 9})})
    with pytest.raises(manage.BridgeError, match="did not consume in time") as failed:
        manage.start(nowhere, "live", timeout_s=10)
    assert "RabbitMQ connection lost" in str(failed.value)
    assert "last 30 lines" in str(failed.value)
    state = manage.status(nowhere, "live")
    assert not state["running"] and state["pid"] is None
    assert not manage.paths(nowhere, "live").pid.exists()


def test_stopped_mid_stream_and_started_again_loses_nothing(env: Env) -> None:
    """What a rollback does to the live bridge: stopped while messages flow, what it had
    not acked stays in the queue, and the next start forwards it (duplicates possible,
    nothing lost)."""
    s, rmq, n = env.settings, env.settings.rabbitmq, 3000
    manage.start(s, "shadow")
    env.publish([celery_message(event(i), task_id=f"t{i}") for i in range(n)])
    wait_until("some messages acked", acked(env, "shadow", 200))
    stopped = manage.stop(s, "shadow")
    assert stopped["stopped_cleanly"] and stopped["exit_code"] == 0, stopped
    first = stopped["totals"]
    assert first["acked"] <= first["produced"] + first["dead_lettered"]
    left = env.depth(rmq.shadow_queue)
    assert left == n - first["acked"]  # every message not acked went back to the queue

    again = manage.start(s, "shadow")
    assert not again["already_running"]
    wait_until("the rest acked", acked(env, "shadow", left))
    assert wait_until("the mirror drained", lambda: env.depth(rmq.shadow_queue) == 0 or None)
    manage.stop(s, "shadow")
    records = read_topic(s, s.kafka.topic, n)
    ids = {json.loads(r.value())["event_id"] for r in records}
    assert ids == {f"E{i}" for i in range(n)}
