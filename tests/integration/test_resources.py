"""Each package provisions and tears down what it owns, and a shadow run's installation is
their composition: after `prepare` every keyspace, topic, queue and exchange of the run
exists; after `remove` none does, nor its Redis keys and job files."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

import storage
from abacus.manager import jobs_dir
from abacus.pipeline import KINDS, checkpoint_root, job_name
from bridge import rabbit
from legacy.keys import RedisKeys
from settings.model import Settings
from shadow import installation

pytestmark = [pytest.mark.integration]


def _keyspaces(s: Settings) -> set[str]:
    session = storage.connect(s.cassandra)
    try:
        return {
            row[0] for row in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
        }
    finally:
        session.cluster.shutdown()


def _topics(s: Settings) -> set[str]:
    return set(AdminClient(s.kafka.client_config()).list_topics(timeout=30).topics)


def _queues(s: Settings) -> dict[str, bool]:
    r = s.rabbitmq
    names = (r.legacy_queue, r.dead_letter_queue, r.shadow_queue, r.mirror_overflow_queue)
    return {q: rabbit.queue_depth(r, q) is not None for q in names}


def _exchange_exists(s: Settings) -> bool:
    try:
        with rabbit.connect(s.rabbitmq, heartbeat_s=0) as conn:
            conn.exchange_declare(s.rabbitmq.exchange, "direct", passive=True)
    except Exception:
        return False
    return True


def test_prepare_provisions_every_package_and_remove_tears_all_down(
    services_up: object, settings: Settings, tmp_path: Path
) -> None:
    base = settings.model_copy(
        update={
            "services": settings.services.model_copy(update={"data_dir": tmp_path}),
            "flink": settings.flink.model_copy(update={"checkpoint_dir": tmp_path / "chk"}),
        }
    )
    inst = installation.create(base)
    s = inst.settings
    wanted = {storage.keyspace_of(s.cassandra, n) for n in installation.KEYSPACES}
    try:
        installation.prepare(inst)
        assert wanted <= _keyspaces(s)
        assert {s.kafka.topic, s.kafka.dlq_topic} <= _topics(s)
        assert all(_queues(s).values()), _queues(s)
        assert _exchange_exists(s)
        client = redis.Redis(**s.redis.client_kwargs())
        key = RedisKeys.of(s.redis).pattern.rstrip("*") + "probe"
        client.set(key, "1")
        names = [job_name(kind, installation.TARGET, inst.job_prefix) for kind in KINDS]
        for name in names:
            (jobs_dir(s) / f"{name}.progress").mkdir(parents=True)
            (jobs_dir(s) / f"{name}.json").write_text("{}")
            checkpoint_root(s, name).mkdir(parents=True)
    finally:
        installation.remove(base, inst.run_id, inst.changes)

    assert not wanted & _keyspaces(s)
    assert not {s.kafka.topic, s.kafka.dlq_topic} & _topics(s)
    assert not any(_queues(s).values()), _queues(s)
    assert not _exchange_exists(s)
    assert client.get(key) is None
    client.close()
    for name in names:
        assert not list(jobs_dir(s).glob(f"{name}.*"))
        assert not checkpoint_root(s, name).exists()
