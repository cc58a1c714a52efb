"""What legacy is doing: queue depths, unacked tasks, pending pre-aggregates, counters.

RabbitMQ's AMQP API reports ready messages and consumers of a queue, not unacknowledged
ones; those are asked of the workers themselves (Celery remote control: active and
reserved tasks), on the installation's own control exchange.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from amqp.exceptions import NotFound
from kombu import Connection

from legacy import deadletter
from legacy.aggregation import redis_client
from legacy.bertha import BigBertha
from legacy.consuming import OFF
from legacy.deadletter import FAILURE_REASONS
from legacy.keys import RedisKeys
from settings import Settings


@dataclass
class Status:
    queue: str
    ready: int  # messages waiting in the legacy queue
    consumers: int  # worker connections consuming it
    unacked: int | None  # tasks delivered to workers and not acked yet (None: not asked)
    dead_letter_queue: str
    dead_letters: int
    pending_fields: int  # Big Bertha increments not yet in Cassandra
    batches: int  # Big Bertha batches taken and not finished
    stats: dict[str, int] = field(default_factory=dict)
    rate: float | None = None  # tasks/s over the sample interval
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> state doc
    redis_aof: bool | None = None  # Redis writes an append-only file (None: it did not say)
    consuming: bool = True  # the hand-over flag (`legacy.consuming`): workers may consume

    @property
    def failed_workers(self) -> dict[str, str]:
        """Workers that died of an error, with the reason from their log; a failure older
        than the last worker start is history (someone restarted legacy since)."""
        started = max(
            (float(d.get("at") or 0) for d in self.workers.values() if d.get("state") == "running"),
            default=0.0,
        )
        return {
            name: str(doc.get("reason") or "unknown")
            for name, doc in self.workers.items()
            if doc.get("state") == "failed" and float(doc.get("at") or 0) >= started
        }

    @property
    def problems(self) -> list[str]:
        """What an operator must know now: dead workers, events legacy failed to count."""
        out = [f"worker {name} died: {reason}" for name, reason in self.failed_workers.items()]
        if self.redis_aof is False:
            out.append(NO_AOF)
        if self.consumers == 0 and self.ready > 0:
            out.append(
                f"{self.ready} messages wait in {self.queue} with no consumer"
                + ("" if self.consuming else " (legacy is paused: `abacus legacy resume`)")
            )
        failed = self.stats.get("failed", 0)
        if failed:
            reasons = ", ".join(
                f"{k[5:]}={v}"
                for k, v in sorted(self.stats.items())
                if k[5:] in FAILURE_REASONS and k.startswith("dead:")
            )
            out.append(
                f"{failed} events failed to count after retries and were dead-lettered ({reasons})"
            )
        if self.stats.get("requeued", 0):
            out.append(
                f"{self.stats['requeued']} tasks could not even be dead-lettered and were requeued"
            )
        return out

    @property
    def chaos(self) -> list[str]:
        """What legacy's chaos knobs did (empty when none fired): lost flushes, and
        flushers killed between their write and their delete with the increments they
        left written but not deleted (written again by the next flush: the over-count)."""
        out = []
        if dropped := self.stats.get("chaos_dropped_flushes", 0):
            out.append(f"{dropped} Big Bertha batch(es) dropped (lost)")
        if killed := self.stats.get("chaos_killed_flushes", 0):
            out.append(
                f"{killed} flusher(s) killed between write and delete: "
                f"{self.stats.get('chaos_unconfirmed_keys', 0)} keys written unconfirmed, "
                f"{self.stats.get('chaos_unconfirmed_count', 0)} count and "
                f"{self.stats.get('chaos_unconfirmed_uniques', 0)} uniques increments "
                "written twice"
            )
        return out

    @property
    def drained(self) -> bool:
        """Nothing left to count: queue empty, nothing unacked, Big Bertha empty."""
        return (
            self.ready == 0 and self.unacked == 0 and self.pending_fields == 0 and self.batches == 0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "drained": self.drained,
            "problems": self.problems,
            "chaos": self.chaos,
        }


def queue_depth(conn: Connection, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue; (0, 0) if it does not exist."""
    channel = conn.channel()
    try:
        _, ready, consumers = channel.queue_declare(queue=name, passive=True)
        return ready, consumers
    except NotFound:
        return 0, 0
    finally:
        with contextlib.suppress(Exception):  # closed by the broker after NOT_FOUND
            channel.close()


def unacked_tasks(settings: Settings, workers: int, timeout_s: float = 1.0) -> int:
    """Tasks the workers hold (executing or prefetched), asked by remote control."""
    if workers == 0:
        return 0  # no consumer: no delivery can be unacked
    from legacy.app import make_app

    app = make_app(settings)
    try:
        inspect = app.control.inspect(timeout=timeout_s, limit=workers)
        if len(inspect.ping() or {}) < workers:
            return -1  # a consumer did not answer (busy, or not a worker): unknown
        total = 0
        for reply in (inspect.active() or {}, inspect.reserved() or {}):
            total += sum(len(tasks) for tasks in reply.values())
        return total
    finally:
        app.close()


NO_AOF = (
    "Redis runs without its append-only file: a restart of it loses Big Bertha's "
    "pending increments, the Check Uniques sets and these stats (legacy then never "
    "counts as drained). It was started with another config: drain legacy, then "
    "restart Redis with the project's (`abacus services down redis`, `up redis`)"
)


def redis_aof(client: Any) -> bool | None:
    """Whether Redis persists legacy's state in an append-only file; None when INFO is not
    answered (a managed Redis may refuse it)."""
    try:
        info = client.info("persistence")
    except redis.ResponseError:
        return None
    value = info.get("aof_enabled") if isinstance(info, dict) else None
    return None if value is None else bool(int(value))


def _stats(client: Any, keys: RedisKeys) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.stats).items()}


def _workers(client: Any, keys: RedisKeys) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, doc in client.hgetall(keys.workers).items():
        try:
            out[name.decode("utf-8", "backslashreplace")] = json.loads(doc)
        except ValueError:
            continue
    return out


def read_status(settings: Settings, ask_workers: bool = True, sample_s: float = 0.0) -> Status:
    keys = RedisKeys.of(settings.redis)
    client = redis_client(settings)
    rabbit = settings.rabbitmq
    try:
        before = _stats(client, keys) if sample_s > 0 else None
        if before is not None:
            time.sleep(sample_s)
        with deadletter.connection(rabbit) as conn:
            ready, consumers = queue_depth(conn, rabbit.legacy_queue)
            dead, _ = queue_depth(conn, rabbit.dead_letter_queue)
        unacked = unacked_tasks(settings, consumers) if ask_workers else None
        bertha = BigBertha(client, keys)
        stats = _stats(client, keys)
        rate = None
        if before is not None:
            done = ("processed", "dead_lettered")
            rate = sum(stats.get(k, 0) - before.get(k, 0) for k in done) / sample_s
        return Status(
            queue=rabbit.legacy_queue,
            ready=ready,
            consumers=consumers,
            unacked=unacked if unacked is None or unacked >= 0 else None,
            dead_letter_queue=rabbit.dead_letter_queue,
            dead_letters=dead,
            pending_fields=bertha.pending_fields(),
            batches=len(list(bertha.batch_ids())),
            stats=stats,
            rate=rate,
            workers=_workers(client, keys),
            redis_aof=redis_aof(client),
            consuming=client.get(keys.consuming) != OFF,
        )
    finally:
        client.close()


def is_drained(settings: Settings) -> bool:
    return read_status(settings).drained


def wait_drained(
    settings: Settings, timeout_s: float = 120.0, poll_s: float = 0.5, confirmations: int = 2
) -> Status:
    """Wait until legacy has drained (`confirmations` reads in a row); raises TimeoutError
    with the last status when it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while True:
        status = read_status(settings)
        streak = streak + 1 if status.drained else 0
        if streak >= confirmations:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"legacy did not drain within {timeout_s:.0f} s: {status.to_dict()}")
        time.sleep(poll_s)
