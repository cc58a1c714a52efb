"""Legacy's side of the hand-over at the queue (issue 14, stage m1): stop and resume
consuming the legacy queue, list who consumes it, and read or back-fill Check Uniques.

The switch is exactly-once only if no legacy worker touches the legacy queue while the
live bridge consumes it. Two mechanisms, both needed:

- a persistent flag in Redis (`legacy.consuming`), obeyed by every worker each time its
  task consumer starts: at worker start and after every broker reconnect. A worker started
  during m1 (a supervisor's restart, a deploy) therefore never consumes;
- Celery's remote control (`cancel_consumer` / `add_consumer` on the installation's control
  exchange) for the workers already running, re-broadcast until every worker let go.

`cancel_consumer` does not give back what a worker holds: messages delivered before the
basic.cancel (prefetched: reserved in Celery) and any RabbitMQ delivers between basic.cancel
and cancel-ok stay unacked on the worker's channel; with acks_late the worker executes
them and acks each after its task (they are not requeued unless the worker dies).
`stop_consuming` therefore waits until RabbitMQ itself says the queue has no consumer and
no unacked message (`rabbitmqctl list_queues`), and the workers say nothing is reserved
or active, before it flushes Big Bertha empty.

RabbitMQ's own views (consumers with their tags, unacked counts) come from `rabbitmqctl`,
run against the node `abacus services` runs (its node name and cookie from
`services.rabbitmq`), or against a cluster's node (`rabbitmq.ctl_node`, with its Erlang
cookie `rabbitmq.ctl_cookie`): rabbitmqctl answers from the node itself, where the
management API's figures are statistics sampled every few seconds (too stale to tell that
nothing is unacked), and AMQP reports a queue's ready messages and consumer count only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from celery import Celery

from counting import AccountKey
from legacy import deadletter
from legacy.aggregation import redis_client
from legacy.bertha import BigBertha
from legacy.consuming import consuming_allowed, set_consuming
from legacy.flusher import Flusher, FlushResult
from legacy.keys import RedisKeys, decode_key, encode_key
from legacy.status import queue_depth
from settings import Settings

log = logging.getLogger(__name__)

Entry = tuple[str, str, list[AccountKey]]  # (company_id, customer_id, its account keys)

INSPECT_TIMEOUT_S = 1.0  # how long a remote-control request waits for replies
RABBITMQCTL_TIMEOUT_S = 120.0
_SCAN_COUNT = 1000
_PIPELINE = 500


class HandoverError(RuntimeError):
    """The hand-over cannot go on (what RabbitMQ or the workers said is in the message)."""


# -- RabbitMQ's view (rabbitmqctl) --------------------------------------------------------


def rabbitmqctl(settings: Settings, *args: str, timeout_s: float = RABBITMQCTL_TIMEOUT_S) -> str:
    """Run `rabbitmqctl -q ARGS` against the node `abacus services` runs for these settings,
    or, with `rabbitmq.ctl_node` set, against that node with `rabbitmq.ctl_cookie`; its
    output. Raises HandoverError when it cannot (not installed, node unreachable)."""
    from services.rabbitmq import BIN

    with _ctl_environment(settings) as (env, node):
        command = [str(BIN / "rabbitmqctl"), "-q", *(["-n", node] if node else []), *args]
        try:
            done = subprocess.run(
                command,
                # no erl_crash.dump in the working directory if the CLI's VM dies
                env={**env, "ERL_CRASH_DUMP_BYTES": "0"},
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HandoverError(f"rabbitmqctl {args[0]}: {type(exc).__name__}: {exc}") from exc
    if done.returncode != 0:
        raise HandoverError(
            f"rabbitmqctl {args[0]} (node {node or 'of abacus services'}) exited "
            f"{done.returncode}: " + (done.stderr or done.stdout).strip()[:500]
        )
    return done.stdout


@contextlib.contextmanager
def _ctl_environment(settings: Settings) -> Iterator[tuple[dict[str, str], str | None]]:
    """rabbitmqctl's environment and node: the local service's, or a cluster node's with
    its cookie in a private HOME (mode 0600), never on the command line."""
    from services.rabbitmq import RabbitService

    rabbit = settings.rabbitmq
    if rabbit.ctl_node is None:
        service = RabbitService(settings)
        cookie = service.dir / ".erlang.cookie"
        if not cookie.is_file():  # the CLI's Erlang VM would die trying to create it
            raise HandoverError(
                f"rabbitmqctl needs the node's Erlang cookie, not found at {cookie}: RabbitMQ "
                "is not run by `abacus services` under this services.data_dir (for another "
                "RabbitMQ set rabbitmq.ctl_node and rabbitmq.ctl_cookie)"
            )
        yield {**os.environ, **service.environment()}, None
        return
    if rabbit.ctl_cookie is None:
        raise HandoverError("rabbitmq.ctl_node is set: rabbitmq.ctl_cookie is needed too")
    with tempfile.TemporaryDirectory(prefix="abacus-ctl-") as home:
        path = Path(home) / ".erlang.cookie"
        path.write_text(rabbit.ctl_cookie.get_secret_value())
        path.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        yield {**env, "HOME": home, "ERL_EPMD_PORT": str(rabbit.ctl_epmd_port)}, rabbit.ctl_node


def _listing(settings: Settings, what: str, *columns: str) -> list[dict[str, Any]]:
    out = rabbitmqctl(
        settings, what, "-p", settings.rabbitmq.vhost, *columns, "--formatter", "json"
    )
    rows = json.loads(out) if out.strip() else []
    return [r for r in rows if isinstance(r, dict)]


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """RabbitMQ's figures for one queue."""

    ready: int
    unacked: int
    consumers: int


def queue_counts(settings: Settings, queue: str | None = None) -> QueueCounts:
    """Ready and unacked messages and consumers of the legacy queue (or `queue`), as
    RabbitMQ counts them; all 0 when the queue does not exist."""
    name = queue or settings.rabbitmq.legacy_queue
    for row in _listing(
        settings, "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers"
    ):
        if row.get("name") == name:
            return QueueCounts(
                int(row["messages_ready"]),
                int(row["messages_unacknowledged"]),
                int(row["consumers"]),
            )
    return QueueCounts(0, 0, 0)


def queue_consumers(settings: Settings, queue: str | None = None) -> list[dict[str, Any]]:
    """Who consumes the legacy queue (or `queue`): one dict per AMQP consumer with its
    consumer tag, ack mode, prefetch, its channel (pid, number) and its connection (pid,
    name: "client address -> server address", peer host and port, user, and the client's
    connection_name when it gave one). From `rabbitmqctl` (see the module's docstring)."""
    name = queue or settings.rabbitmq.legacy_queue
    consumers = [
        c
        for c in _listing(
            settings,
            "list_consumers",
            "queue_name",
            "consumer_tag",
            "channel_pid",
            "ack_required",
            "prefetch_count",
            "active",
        )
        if c.get("queue_name") == name
    ]
    if not consumers:
        return []
    channels = {
        c["pid"]: c for c in _listing(settings, "list_channels", "pid", "connection", "number")
    }
    connections = {
        c["pid"]: c
        for c in _listing(
            settings,
            "list_connections",
            "pid",
            "name",
            "peer_host",
            "peer_port",
            "user",
            "client_properties",
        )
    }
    out = []
    for consumer in consumers:
        channel = channels.get(consumer["channel_pid"], {})
        connection = connections.get(channel.get("connection"), {})
        props = connection.get("client_properties")
        out.append(
            {
                "queue": name,
                "consumer_tag": consumer.get("consumer_tag"),
                "ack_required": consumer.get("ack_required"),
                "prefetch_count": consumer.get("prefetch_count"),
                "active": consumer.get("active"),
                "channel_pid": consumer.get("channel_pid"),
                "channel_number": channel.get("number"),
                "connection_pid": channel.get("connection"),
                "connection": connection.get("name"),
                "peer_host": _address(connection.get("peer_host")),
                "peer_port": connection.get("peer_port"),
                "user": connection.get("user"),
                "connection_name": _client_property(props, "connection_name"),
            }
        )
    return out


def _address(value: Any) -> Any:
    """rabbitmqctl's JSON gives an IP address as its list of numbers: as text."""
    if isinstance(value, list) and len(value) in (4, 8):
        if len(value) == 4:
            return str(ipaddress.IPv4Address(bytes(value)))
        return str(ipaddress.IPv6Address(b"".join(v.to_bytes(2, "big") for v in value)))
    return value


def _client_property(props: Any, name: str) -> Any:
    """A value of rabbitmqctl's client_properties (a list of [name, type, value])."""
    if isinstance(props, dict):
        return props.get(name)
    for item in props or []:
        if isinstance(item, list | tuple) and len(item) == 3 and item[0] == name:
            return item[2]
    return None


# -- the workers' view (Celery remote control) --------------------------------------------


@dataclass
class Observation:
    """What the workers and RabbitMQ said at one moment."""

    workers: list[str]  # replied to ping
    holding: list[str]  # of them, consuming the legacy queue (active_queues)
    reserved: int  # prefetched, not started (inspect reserved)
    active: int  # executing (inspect active)
    ready: int  # waiting in the queue (AMQP)
    consumers: int  # of the queue (AMQP)
    unacked: int | None = None  # RabbitMQ's count; None: not asked

    @property
    def released(self) -> bool:
        """No worker consumes the queue or holds a task of it."""
        return (
            not self.holding
            and self.consumers == 0
            and self.reserved == 0
            and self.active == 0
            and not self.unacked
        )

    @property
    def consuming(self) -> bool:
        """Every replying worker consumes the queue."""
        return bool(self.workers) and set(self.holding) == set(self.workers)


def _observe(app: Celery, settings: Settings, ask_rabbitmqctl: bool = False) -> Observation:
    queue = settings.rabbitmq.legacy_queue
    control = app.control
    workers = sorted(
        name for reply in control.ping(timeout=INSPECT_TIMEOUT_S) or [] for name in reply
    )
    holding: list[str] = []
    reserved = active = 0
    if workers:
        inspect = control.inspect(
            destination=workers, timeout=INSPECT_TIMEOUT_S * 2, limit=len(workers)
        )
        for name, queues in (inspect.active_queues() or {}).items():
            if any(q.get("name") == queue for q in queues or []):
                holding.append(name)
        reserved = sum(len(t or []) for t in (inspect.reserved() or {}).values())
        active = sum(len(t or []) for t in (inspect.active() or {}).values())
    with deadletter.connection(settings.rabbitmq) as conn:
        ready, consumers = queue_depth(conn, queue)
    unacked = queue_counts(settings).unacked if ask_rabbitmqctl else None
    return Observation(workers, sorted(holding), reserved, active, ready, consumers, unacked)


def _stats(settings: Settings) -> dict[str, int]:
    client = redis_client(settings)
    try:
        raw = cast("dict[bytes, bytes]", client.hgetall(RedisKeys.of(settings.redis).stats))
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items()}


@dataclass
class _Waiter:
    timeout_s: float
    poll_s: float
    start: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def check(self, what: str, last: object) -> None:
        if self.elapsed_s > self.timeout_s:
            raise TimeoutError(f"{what} within {self.timeout_s:.0f} s; last seen: {last}")
        time.sleep(self.poll_s)


def stop_consuming(
    settings: Settings, timeout_s: float = 300.0, poll_s: float = 0.5
) -> dict[str, Any]:
    """Make legacy's workers stop consuming the legacy queue, let them finish what they
    hold, then flush Big Bertha empty. Idempotent (a second call finds everything stopped).

    Order: the flag goes "off" first (a worker starting or reconnecting from now on does
    not consume), then `cancel_consumer` is broadcast (again on every poll while a worker
    or any consumer still holds the queue: a worker that was starting may have missed it).
    Done when, twice in a row, no replying worker has the queue in its active_queues, the
    queue has no consumer, nothing is reserved or active in the workers, and RabbitMQ says
    nothing of the queue is unacked; then Big Bertha is flushed until its pending hash and
    batches are gone. Raises TimeoutError (with what it last saw) after `timeout_s`: the
    flag stays off; `resume_consuming` undoes it.

    Returns a report: the workers seen, what they held before and after, the messages left
    in the queue (for the live bridge), Big Bertha's keys flushed, legacy's processed and
    dead-lettered counters, the elapsed time."""
    from legacy.app import make_app

    queue = settings.rabbitmq.legacy_queue
    waiter = _Waiter(timeout_s, poll_s)
    set_consuming(settings, False)
    app = make_app(settings)
    try:
        before = _observe(app, settings, ask_rabbitmqctl=True)
        seen = set(before.workers)
        broadcasts = 0
        streak = 0
        last = before
        while True:
            if last.released:
                streak += 1
                if streak >= 2:
                    break
            else:
                streak = 0
                if last.holding or last.consumers:
                    app.control.cancel_consumer(queue)
                    broadcasts += 1
            waiter.check("legacy's workers did not let go of the queue", last)
            last = _observe(app, settings)
            if last.released:  # RabbitMQ's own count confirms what the workers said
                last.unacked = queue_counts(settings).unacked
            seen.update(last.workers)
        released_s = waiter.elapsed_s
        bertha = _flush_empty(settings, waiter)
        after = _observe(app, settings, ask_rabbitmqctl=True)
        seen.update(after.workers)
        if not after.released:  # a consumer came back while Big Bertha was flushed
            raise HandoverError(f"the legacy queue is held again after the flush: {after}")
    finally:
        app.close()
    stats = _stats(settings)
    return {
        "queue": queue,
        "consuming": "off",
        "workers": sorted(seen),
        "broadcasts": broadcasts,
        "before": asdict(before),
        "after": asdict(after),
        "queue_ready": after.ready,
        "bertha": bertha,
        "processed": stats.get("processed", 0),
        "dead_lettered": stats.get("dead_lettered", 0),
        "released_s": round(released_s, 3),
        "elapsed_s": round(waiter.elapsed_s, 3),
    }


def _flush_empty(settings: Settings, waiter: _Waiter) -> dict[str, int]:
    """Flush Big Bertha until nothing is pending and no batch is left. Another flusher (a
    worker's thread, `legacy flush`) may hold a batch's lease: it finishes it, or this one
    claims it once the lease expired."""
    flusher = Flusher(settings)
    client = redis_client(settings)
    bertha = BigBertha(client, RedisKeys.of(settings.redis))
    try:
        pending = bertha.pending_fields()
        batches = len(list(bertha.batch_ids()))
        total = FlushResult()
        while True:
            total += flusher.flush_once()
            left = bertha.pending_fields(), len(list(bertha.batch_ids()))
            if left == (0, 0):
                break
            waiter.check("Big Bertha was not flushed empty", f"{left[0]} fields, {left[1]} batches")
    finally:
        flusher.close()
        client.close()
    return {
        "pending_fields_before": pending,
        "batches_before": batches,
        "keys_flushed": total.keys,
        "batches_flushed": total.batches,
    }


def resume_consuming(
    settings: Settings, timeout_s: float = 300.0, poll_s: float = 0.5
) -> dict[str, Any]:
    """Clear the flag and broadcast `add_consumer` (again to each replying worker that does
    not consume yet) until every replying worker has the legacy queue in its
    active_queues. With no worker running, it returns at once (workers started later
    consume: the flag is clear). Idempotent."""
    from legacy.app import make_app

    queue = settings.rabbitmq.legacy_queue
    waiter = _Waiter(timeout_s, poll_s)
    set_consuming(settings, True)
    app = make_app(settings)
    try:
        last = _observe(app, settings)
        seen = set(last.workers)
        broadcasts = 0
        while last.workers and not last.consuming:
            lacking = sorted(set(last.workers) - set(last.holding))
            app.control.add_consumer(queue, destination=lacking)
            broadcasts += 1
            waiter.check("legacy's workers did not consume the queue again", last)
            last = _observe(app, settings)
            seen.update(last.workers)
    finally:
        app.close()
    return {
        "queue": queue,
        "consuming": "on",
        "workers": sorted(seen),
        "broadcasts": broadcasts,
        "after": asdict(last),
        "elapsed_s": round(waiter.elapsed_s, 3),
    }


# -- Check Uniques ---------------------------------------------------------------------------


def check_uniques(settings: Settings) -> Iterator[Entry]:
    """Legacy's Check Uniques sets: (company_id, customer_id, the account keys it already
    counted this customer unique under), one per set, keys sorted. Read with SCAN: call it
    while legacy is stopped (`stop_consuming`) for a consistent picture."""
    keys = RedisKeys.of(settings.redis)
    client = redis_client(settings)
    try:
        names: list[bytes] = []
        for name in client.scan_iter(keys.uniques_pattern, count=_SCAN_COUNT):
            names.append(name)
            if len(names) >= _PIPELINE:
                yield from _entries(client, keys, names)
                names = []
        yield from _entries(client, keys, names)
    finally:
        client.close()


def _entries(client: Any, keys: RedisKeys, names: list[bytes]) -> Iterator[Entry]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.smembers(name)
    for name, members in zip(names, pipe.execute(), strict=True):
        if not members:
            continue  # expired between SCAN and SMEMBERS
        company_id, customer_id = json.loads(name.decode("utf-8")[len(keys.uniques_prefix) :])
        yield company_id, customer_id, sorted(decode_key(m) for m in members)


def backfill_check_uniques(settings: Settings, entries: Iterable[Entry]) -> int:
    """Add each entry's keys to its customer's Check Uniques set, with the TTL legacy gives
    a set on each event of the customer (`redis.uniques_ttl_s`, from now). Idempotent: a key
    already there is not added again. Returns how many members were added."""
    keys = RedisKeys.of(settings.redis)
    ttl_s = settings.redis.uniques_ttl_s
    client = redis_client(settings)
    added = 0
    try:
        pipe = client.pipeline(transaction=False)
        queued = 0
        for company_id, customer_id, account_keys in entries:
            if not account_keys:
                continue
            name = keys.uniques(company_id, customer_id)
            pipe.sadd(name, *[encode_key(k) for k in account_keys])
            pipe.expire(name, ttl_s)
            queued += 1
            if queued >= _PIPELINE:
                added += sum(pipe.execute()[0::2])
                queued = 0
        if queued:
            added += sum(pipe.execute()[0::2])
    finally:
        client.close()
    return added


__all__ = [
    "Entry",
    "HandoverError",
    "Observation",
    "QueueCounts",
    "backfill_check_uniques",
    "check_uniques",
    "consuming_allowed",
    "queue_consumers",
    "queue_counts",
    "rabbitmqctl",
    "resume_consuming",
    "set_consuming",
    "stop_consuming",
]
