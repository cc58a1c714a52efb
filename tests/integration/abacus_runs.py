"""Abacus jobs run in isolation on the shared servers (test helpers, not tests).

A `Run` has its own topics, keyspaces, job names and consumer groups (`isolated_run`), and
everything it made is removed after; the recount helpers say what its stores must hold.
Used by test_abacus_jobs, test_abacus_remote and tests/faults/test_cassandra_kill.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abacus import manager
from abacus.manager import RunOptions
from abacus.pipeline import checkpoint_root
from counting import Event, Recount, parse_event
from counting.generate import GeneratorConfig, generate
from services.procs import child_env
from settings.model import Settings

REPO = Path(__file__).resolve().parents[2]

# the events topic takes records up to 8 MiB, as the bridge creates it; the DLQ topic only
# 2 MiB, so that a larger dead letter must be cut to be written (`truncated_to`)
MAX_MESSAGE = 8 * 1024 * 1024
MAX_DLQ_MESSAGE = 2 * 1024 * 1024 + 4096


@dataclass
class Run:
    settings: Settings
    prefix: str
    lines: list[str | bytes] = field(default_factory=list)
    session: Any = None

    def name(self, kind: str) -> str:
        return f"{self.prefix}{kind}"

    def options(self, **changes: Any) -> RunOptions:
        return RunOptions(prefix=self.prefix, window_ms=500, **changes)

    def produce(self, lines: list[str] | list[bytes] | list[str | bytes]) -> None:
        """The raw event bytes, a valid event keyed by company_id (so a redelivery lands in
        its event's partition, behind it), anything else unkeyed: a publisher writing
        straight to the topic, past the bridge's checks."""
        from confluent_kafka import Producer

        producer = Producer(
            {**self.settings.kafka.client_config(), "message.max.bytes": MAX_MESSAGE + 64 * 1024}
        )
        for line in lines:
            raw = line.encode("utf-8") if isinstance(line, str) else line
            parsed = parse_event(raw)
            key = parsed.company_id.encode() if isinstance(parsed, Event) else None
            producer.produce(self.settings.kafka.topic, value=raw, key=key)
            producer.poll(0)
        assert producer.flush(60) == 0
        self.lines += lines

    def store(self) -> Any:
        import storage

        return storage.CounterStore(
            storage.Prepared(self.session), self.settings.cassandra, "shadow"
        )


def recount_of(lines: Iterable[str | bytes]) -> Recount:
    recount = Recount()
    for line in lines:
        recount.add_raw(line)
    return recount


def account_counts(counts: Any) -> dict[Any, tuple[int, int]]:
    return {c.key: (c.count, c.uniques) for c in counts}


def customer_counts(counts: Any) -> dict[Any, int]:
    return {c.key: c.count for c in counts}


def first_differences(got: dict[Any, Any], want: dict[Any, Any]) -> list[Any]:
    return sorted(
        (
            (k, got.get(k), want.get(k))
            for k in got.keys() | want.keys()
            if got.get(k) != want.get(k)
        ),
        key=str,
    )[:5]


def generated_events(seed: int, n: int) -> list[str]:
    config = GeneratorConfig(n=n, seed=seed, companies=8, customers=400, duplicate_share=0.1)
    return [json.dumps(e) for e in generate(config)]


def job_status(settings: Settings, name: str) -> dict[str, Any]:
    """One job's row of `abacus job status --format json`, run as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "job", "status", "--format", "json"],
        env=child_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (job,) = [j for j in json.loads(done.stdout) if j["name"] == name]
    return dict(job)


def private_settings(settings: Settings, tag: str, **flink: Any) -> Settings:
    """`settings` with the topics and keyspaces of `tag` (flink settings changed by `flink`,
    checkpoints every 3 s unless given)."""
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"topic": f"test.{tag}.events", "dlq_topic": f"test.{tag}.dlq"}
            ),
            "cassandra": settings.cassandra.model_copy(update={"keyspace_prefix": f"{tag}_"}),
            "flink": settings.flink.model_copy(update={"checkpoint_interval_ms": 3000, **flink}),
        }
    )


def schema_session(settings: Settings) -> Any:
    """A Cassandra session, the keyspaces and tables of `settings` applied."""
    import storage

    session = storage.connect(settings.cassandra)
    for cql in storage.statements(settings.cassandra):
        session.execute(cql, timeout=120)
    return session


def remove_job(settings: Settings, name: str) -> None:
    """Stop the job `name` if it runs, and remove its checkpoints and job files."""
    current = manager.status(settings, name)
    if current is not None and current.status in manager.RUNNING:
        manager.stop(settings, name)
    shutil.rmtree(checkpoint_root(settings, name), ignore_errors=True)
    for path in manager.jobs_dir(settings).glob(f"{name}.*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def drop_private(settings: Settings, session: Any, admin: Any) -> None:
    """Drop the keyspaces and delete the topics of `private_settings`."""
    import storage

    for keyspace in [*storage.STORES, storage.OPS]:
        session.execute(
            f"DROP KEYSPACE IF EXISTS {storage.keyspace_of(settings.cassandra, keyspace)}",
            timeout=120,
        )
    for future in admin.delete_topics([settings.kafka.topic, settings.kafka.dlq_topic]).values():
        future.result()


@contextlib.contextmanager
def isolated_run(
    settings: Settings, tag: str, dlq_max_message: int = MAX_DLQ_MESSAGE, **flink: Any
) -> Iterator[Run]:
    """A Run with its own topics, keyspaces, job names and groups (flink settings changed by
    `flink`); on exit its jobs are stopped and everything it made is removed."""
    from confluent_kafka.admin import AdminClient, NewTopic

    private = private_settings(settings, tag, **flink)
    admin = AdminClient(private.kafka.client_config())
    futures = admin.create_topics(
        [
            NewTopic(private.kafka.topic, 4, 1, config={"max.message.bytes": str(MAX_MESSAGE)}),
            NewTopic(
                private.kafka.dlq_topic, 1, 1, config={"max.message.bytes": str(dlq_max_message)}
            ),
        ]
    )
    for future in futures.values():
        future.result()
    session = schema_session(private)
    state = Run(private, f"{tag}-", session=session)
    try:
        yield state
    finally:
        for kind in ("statistic", "customer"):
            remove_job(private, state.name(kind))
        drop_private(private, session, admin)
        session.cluster.shutdown()
