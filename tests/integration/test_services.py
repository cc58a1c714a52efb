"""`abacus services`: the four real servers serve, status is truthful, up is idempotent."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from services import manager
from services.base import PortInUseError, StartError, StartResult
from services.redis import RedisService
from settings.model import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _private(settings: Settings, tmp_path: Path, redis_port: int) -> Settings:
    """A copy of the settings with its own data dir and Redis port (a throwaway instance)."""
    return settings.model_copy(
        update={
            "services": settings.services.model_copy(
                update={"data_dir": tmp_path / "abacus", "start_timeout_s": 60.0}
            ),
            "redis": settings.redis.model_copy(update={"port": redis_port}),
        }
    )


def test_kafka_produces_and_consumes(settings: Settings, services_up: object) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = f"test.services.{uuid.uuid4().hex[:12]}"
    value = uuid.uuid4().bytes
    conf = settings.kafka.client_config()
    acked: list[tuple[Any, Any]] = []
    producer = Producer(conf)
    producer.produce(topic, key=b"k", value=value, on_delivery=lambda e, m: acked.append((e, m)))
    assert producer.flush(30) == 0
    err, msg = acked[0]
    assert err is None
    consumer = Consumer({**conf, "group.id": f"test-{topic}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, msg.partition(), msg.offset())])
    try:
        got = None
        for _ in range(40):
            got = consumer.poll(0.5)
            if got is not None and got.error() is None:
                break
        assert got is not None and got.error() is None
        assert (got.key(), got.value()) == (b"k", value)
    finally:
        consumer.close()


def test_cassandra_answers_and_stores(settings: Settings, services_up: object) -> None:
    from cassandra.cluster import Cluster

    cfg = settings.cassandra
    keyspace = f"test_services_{uuid.uuid4().hex[:12]}"
    cluster = Cluster(cfg.hosts, port=cfg.port)
    try:
        session = cluster.connect()
        (version,) = session.execute("SELECT release_version FROM system.local").one()
        assert version == settings.services.cassandra_version
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(f"CREATE TABLE {keyspace}.t (k text PRIMARY KEY, v int)")
        session.execute(f"INSERT INTO {keyspace}.t (k, v) VALUES ('a', 42)")
        assert session.execute(f"SELECT v FROM {keyspace}.t WHERE k = 'a'").one().v == 42
        session.execute(f"DROP KEYSPACE {keyspace}")
    finally:
        cluster.shutdown()


def test_rabbitmq_publishes_and_gets(settings: Settings, services_up: object) -> None:
    from kombu.connection import Connection
    from kombu.entity import Queue

    name = f"test.services.{uuid.uuid4().hex[:12]}"
    with Connection(settings.rabbitmq.url(), connect_timeout=10) as conn:
        queue = Queue(name, routing_key=name, durable=False)(conn.default_channel)
        queue.declare()
        try:
            conn.Producer().publish({"n": 1}, routing_key=name, serializer="json")
            message = None
            for _ in range(50):
                message = queue.get(no_ack=False)
                if message is not None:
                    break
                time.sleep(0.1)
            assert message is not None
            assert message.payload == {"n": 1}
            message.ack()
        finally:
            queue.delete()


def test_redis_sets_and_gets(settings: Settings, services_up: object) -> None:
    import redis

    client = redis.Redis(**settings.redis.client_kwargs())
    key = f"{settings.redis.prefix}test:services:{uuid.uuid4().hex}"
    try:
        assert client.set(key, "v", ex=60)
        assert client.get(key) == b"v"
    finally:
        client.delete(key)
        client.close()


def test_status_lists_four_running_within_budget(settings: Settings, services_up: object) -> None:
    report = manager.status(settings)
    assert [s.name for s in report.services] == ["kafka", "cassandra", "rabbitmq", "redis"]
    for s in report.services:
        assert s.state == "running", s
        assert s.pid is not None and s.pid in s.pids
        assert s.version and s.version != "unknown"
        assert s.rss_bytes > 0
    versions = {s.name: s.version for s in report.services}
    assert versions["kafka"] == settings.services.kafka_version
    assert versions["cassandra"] == settings.services.cassandra_version
    assert len(next(s for s in report.services if s.name == "rabbitmq").pids) > 1  # + epmd...
    assert report.total_rss_bytes == sum(s.rss_bytes for s in report.services)
    assert report.total_rss_bytes < manager.MEMORY_BUDGET_BYTES


def test_up_again_is_a_noop(settings: Settings, services_up: list[StartResult]) -> None:
    before = {s.name: s.pid for s in manager.status(settings).services}
    again = manager.ensure_up(settings)
    assert all(r.already_running for r in again)
    assert {r.name: r.pid for r in again} == before


def test_port_held_by_a_stranger_fails_at_once(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        port = stranger.getsockname()[1]
        private = _private(settings, tmp_path, port)
        reported: list[tuple[str, str]] = []
        with pytest.raises(PortInUseError) as caught:
            manager.ensure_up(private, ["redis"], lambda name, msg: reported.append((name, msg)))
    assert f"port {port} for redis" in str(caught.value)
    assert "in use by another process (not started by abacus)" in str(caught.value)
    # refused before any server was configured, launched or waited for (no start_timeout_s)
    assert reported == []
    assert not RedisService(private).pid_file.exists()  # nothing was started
    assert not RedisService(private).dir.exists()


def test_throwaway_redis_starts_and_stops(settings: Settings, tmp_path: Path) -> None:
    private = _private(settings, tmp_path, _free_port())
    (started,) = manager.ensure_up(private, ["redis"])
    try:
        assert not started.already_running
        (running,) = manager.status(private, ["redis"]).services
        assert (running.state, running.pid) == ("running", started.pid)
    finally:
        (stopped,) = manager.stop(private, ["redis"], purge=True)
    assert stopped.was_running and not stopped.killed
    (after,) = manager.status(private, ["redis"]).services
    assert after.state == "stopped" and after.pids == ()
    assert not RedisService(private).dir.exists()


def test_a_server_that_dies_is_reported_with_its_log(settings: Settings, tmp_path: Path) -> None:
    class Dying(RedisService):
        def command(self) -> list[str]:
            return ["sh", "-c", "echo 'fatal: cannot start (test)'; exit 3"]

    svc = Dying(_private(settings, tmp_path, _free_port()))
    with pytest.raises(StartError) as caught:
        svc.start(timeout_s=60)
    message = str(caught.value)
    assert "redis exited with code 3" in message
    assert str(svc.log_file) in message
    assert "fatal: cannot start (test)" in message


def test_cli_status_json(services_up: object) -> None:
    from cli import root

    result = CliRunner().invoke(root, ["services", "status", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [s["state"] for s in report["services"]] == ["running"] * 4
    assert all(s["pid"] and s["version"] and s["rss_bytes"] > 0 for s in report["services"])
    assert report["within_budget"] is True
    assert report["total_rss_bytes"] < report["budget_bytes"] == 4 * 1024**3


def _cli_env(private: Settings) -> dict[str, str]:
    return {
        "ABACUS_SERVICES__DATA_DIR": str(private.services.data_dir),
        "ABACUS_SERVICES__START_TIMEOUT_S": str(private.services.start_timeout_s),
        "ABACUS_REDIS__PORT": str(private.redis.port),
    }


def test_up_restarts_a_killed_server_and_says_so(settings: Settings, tmp_path: Path) -> None:
    """issue 12: `services up` right after a SIGKILL took the stale pid for a live server."""
    import os
    import signal

    from cli import root

    private = _private(settings, tmp_path, _free_port())
    (first,) = manager.ensure_up(private, ["redis"])
    try:
        os.kill(first.pid, signal.SIGKILL)  # no wait: `up` must cope with a dying process
        result = CliRunner().invoke(root, ["services", "up", "redis"], env=_cli_env(private))
        assert result.exit_code == 0, result.output
        assert f"was dead (stale pid {first.pid})" in result.output, result.output
        (running,) = manager.status(private, ["redis"]).services
        assert running.state == "running" and running.pid != first.pid, running
    finally:
        manager.stop(private, ["redis"], purge=True)


def test_up_ends_leftovers_of_a_dead_launcher(settings: Settings, tmp_path: Path) -> None:
    """The pid file's process died but a process of ours still holds the port (as RabbitMQ's
    beam.smp when its /bin/sh launcher is killed): `up` ends it and starts a fresh server."""
    import os
    import signal

    from services import procs

    class Wrapped(RedisService):  # the launcher is a shell whose child is the server
        def command(self) -> list[str]:
            return ["sh", "-c", f"redis-server {self.dir / 'redis.conf'}; :"]

    private = _private(settings, tmp_path, _free_port())
    svc = Wrapped(private)
    first = svc.start(timeout_s=60)
    try:
        server = [p for p in svc.processes() if p != first.pid]
        assert server, svc.processes()
        os.kill(first.pid, signal.SIGKILL)
        # wait for the launcher's death: reap's WNOHANG right after the kill can find it still
        # running and leave a zombie, which the next `start` sees alive (flaked under load)
        os.waitpid(first.pid, 0)
        restarted = svc.start(timeout_s=60)
        assert restarted.restarted and restarted.stale_pid == first.pid, restarted
        assert set(server) <= set(restarted.leftovers), (server, restarted)
        assert not any(procs.alive(p) for p in server)
        assert svc.status().state == "running"
    finally:
        svc.stop(purge=True)


def test_up_names_a_paused_server_and_leaves_it(settings: Settings, tmp_path: Path) -> None:
    """A SIGSTOPped server is alive but does not serve: `up` says so (state stopped), does
    not kill it and does not start a second one."""
    import os
    import signal

    private = _private(settings, tmp_path, _free_port())
    private = private.model_copy(
        update={"services": private.services.model_copy(update={"start_timeout_s": 3.0})}
    )
    (first,) = manager.ensure_up(private, ["redis"])
    try:
        os.kill(first.pid, signal.SIGSTOP)
        with pytest.raises(StartError) as caught:
            manager.ensure_up(private, ["redis"])
        assert f"pid {first.pid}, state stopped" in str(caught.value), caught.value
        os.kill(first.pid, signal.SIGCONT)
        (again,) = manager.ensure_up(private, ["redis"])
        assert again.already_running and again.pid == first.pid
    finally:
        os.kill(first.pid, signal.SIGCONT)
        manager.stop(private, ["redis"], purge=True)
