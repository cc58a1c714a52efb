"""The mirror queue's overflow, counted: drain the overflow queue, count per event date.

The mirror queue is bounded (bridge.rabbit.mirror_arguments): when the shadow bridge is
down long enough, RabbitMQ drops the oldest mirror messages (drop-head) and dead-letters
them to the overflow queue. Those events never reach Kafka, so Abacus will count less than
legacy on their dates; this drainer makes that visible: it consumes the overflow queue in
its own thread and connection, adds each batch's counts per local event date to the ops
keyspace (storage.overflow) and only then acks the batch. `abacus bridge status` shows the
counts, `compare` names them in the audit of each date.

The overflow queue is bounded too; when the drainer finds it full, messages may have been
dropped from it uncounted: `overflow_full` counts those sightings (the per-date counts are
then a lower bound).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bridge import rabbit
from bridge.amqp091 import AmqpError
from bridge.decode import Good, Message, decode
from bridge.status import Counts
from counting import bucket_label, parse_event
from counting.model import Event
from settings.model import Settings
from storage.overflow import UNDATED, Overflow

log = logging.getLogger("abacus.bridge.overflow")

BATCH = 500  # messages per Cassandra write and ack
MAX_BACKOFF_S = 30.0


def event_date(msg: Message) -> str:
    """The local date of the message's event (YYYY-MM-DD), or UNDATED when the message is
    not one the bridge would forward or its event is invalid. Never raises."""
    try:
        rec = decode(msg, 0)
        if type(rec) is not Good:
            return UNDATED
        event = parse_event(rec.value)
        if not isinstance(event, Event):
            return UNDATED
        return bucket_label(event.timestamp, event.timezone, "day")
    except Exception:  # poison of any kind is still an overflowed message: count it
        return UNDATED


def tally(deliveries: list[Any]) -> dict[str, Overflow]:
    """Overflow counts per date of a batch of deliveries."""
    out: dict[str, list[int]] = {}
    for d in deliveries:
        c = out.setdefault(event_date(d), [0, 0])
        c[0] += 1
        c[1] += bool(d.redelivered)
    return {date: Overflow(m, r) for date, (m, r) in out.items()}


class OverflowDrainer:
    """Consumes `rabbitmq.mirror_overflow_queue`, counts per date, acks after the write.

    `store` is built lazily (the first overflow connects to Cassandra); tests may pass one.
    """

    def __init__(
        self,
        settings: Settings,
        counts: Counts,
        *,
        store_factory: Callable[[], Any] | None = None,
        batch: int = BATCH,
        idle_flush_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.rabbit = settings.rabbitmq
        self.counts = counts
        self.batch = batch
        self.idle_flush_s = idle_flush_s
        self._store_factory = store_factory or self._cassandra_store
        self._store: Any = None
        self._closers: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""

    # ------------------------------------------------------------ control

    def start(self) -> OverflowDrainer:
        self._thread = threading.Thread(target=self.run, name="mirror-overflow", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        backoff = 1.0
        try:
            while not self._stop.is_set():
                try:
                    self._drain()
                    backoff = 1.0
                except Exception as exc:  # RabbitMQ or Cassandra down: retry, never exit
                    self._error(f"overflow drain failed, retrying in {backoff:.0f}s", exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            for close in self._closers:
                try:
                    close()
                except Exception as exc:
                    self._error("closing", exc)

    def _drain(self) -> None:
        conn = rabbit.connect(self.rabbit)
        try:
            rabbit.declare_overflow_queue(conn, self.rabbit)
            self._check_full(conn)
            conn.basic_qos(0, self.batch, False)
            conn.basic_consume(self.rabbit.mirror_overflow_queue)
            batch: list[Any] = []
            last_read = time.monotonic()
            while not self._stop.is_set():
                got = conn.read_deliveries(0.1, max_count=self.batch - len(batch))
                now = time.monotonic()
                if got:
                    batch += got
                    last_read = now
                if batch and (len(batch) >= self.batch or now - last_read >= self.idle_flush_s):
                    self._count(conn, batch)
                    batch = []
                conn.heartbeat_tick()
        finally:
            conn.abort()  # unacked deliveries go back to the queue, counted on redelivery

    def _count(self, conn: Any, batch: list[Any]) -> None:
        counts = tally(batch)
        if self._store is None:
            self._store = self._store_factory()
        self._store.add(counts)  # before the ack: a crash in between counts it twice
        conn.basic_ack(batch[-1].delivery_tag, multiple=True)
        self.counts.mirror_overflow += len(batch)
        self.counts.mirror_overflow_redelivered += sum(o.redelivered for o in counts.values())
        self._check_full(conn)

    def _check_full(self, conn: Any) -> None:
        try:
            _, ready, _ = conn.queue_declare(self.rabbit.mirror_overflow_queue, passive=True)
        except AmqpError as exc:
            self._error("overflow queue depth", exc)
            raise
        if ready >= self.rabbit.mirror_max_length:
            self.counts.overflow_full += 1
            self._error(
                "overflow queue full",
                f"{ready:,} messages: the oldest may have been dropped uncounted",
            )

    def _cassandra_store(self) -> Any:
        return _cassandra_store(self.settings, self._closers)

    def _error(self, what: str, exc: BaseException | str) -> None:
        self.last_error = f"{what}: {exc}"
        log.warning("%s", self.last_error)


# ---------------------------------------------------------------- upgrading an unbounded mirror


class UpgradeRefused(Exception):
    """The mirror cannot be upgraded now; the message says why and what to do."""


def upgrade_mirror(settings: Settings, store: Any = None) -> dict[str, Overflow]:
    """Replace a mirror queue declared with other arguments (an unbounded one from an
    earlier version) by the bounded one; the counts per date of its backlog.

    RabbitMQ cannot change a queue's arguments, and AMQP cannot swap two bindings
    atomically, so: the overflow queue is bound to the exchange first (what legacy's
    publishers send during the upgrade is caught there, and counted as overflow by the
    bridge later), the old mirror is unbound, its backlog is counted per event date as
    mirror overflow (those events never reach Abacus; the audits of their dates say so),
    it is deleted (only when empty), the bounded mirror is declared and bound, and the
    overflow queue unbound again. Nothing is lost uncounted; a message published during
    one of the two switches (one AMQP round trip each) may be counted twice, or counted
    as overflow and also bridged. Resumable: run it again after a crash.
    """
    r = settings.rabbitmq
    if _mirror_is_current(r):
        with _topology_channel(r) as ch:  # a crash may have left the overflow bound
            ch.queue_unbind(r.mirror_overflow_queue, r.exchange, r.routing_key)
        return {}
    with _topology_channel(r) as ch:
        depth = rabbit.queue_depth(r, r.shadow_queue)
        if depth is not None and depth[1]:
            raise UpgradeRefused(
                f"mirror queue {r.shadow_queue!r} has {depth[1]} consumer(s): stop the "
                "shadow bridge first"
            )
        rabbit.declare_overflow_queue(ch, r)
        ch.queue_bind(r.mirror_overflow_queue, r.exchange, r.routing_key)
        ch.queue_unbind(r.shadow_queue, r.exchange, r.routing_key)
    store = store if store is not None else _cassandra_store(settings, [])
    counted = drain_and_count(r, r.shadow_queue, store)
    with _topology_channel(r) as ch:
        ch.queue_delete(r.shadow_queue, if_empty=True)
        rabbit.declare_shadow_queue(ch, r)
        ch.queue_unbind(r.mirror_overflow_queue, r.exchange, r.routing_key)
    return counted


def drain_and_count(rabbit_settings: Any, queue: str, store: Any) -> dict[str, Overflow]:
    """Consume `queue` until it is empty, adding each batch's counts per date to `store`
    before acking it; the total counts per date."""
    total: dict[str, Overflow] = {}
    conn = rabbit.connect(rabbit_settings)
    try:
        conn.basic_qos(0, BATCH, False)
        tag = conn.basic_consume(queue)
        while True:
            got = conn.read_deliveries(0.5, max_count=BATCH)
            if not got:
                if conn.queue_declare(queue, passive=True)[1] == 0:
                    break
                continue
            counts = tally(got)
            store.add(counts)
            conn.basic_ack(got[-1].delivery_tag, multiple=True)
            for date, o in counts.items():
                t = total.get(date, Overflow())
                total[date] = Overflow(t.messages + o.messages, t.redelivered + o.redelivered)
        conn.basic_cancel(tag)
    finally:
        conn.close()
    return total


def _mirror_is_current(r: Any) -> bool:
    """The mirror exists with this version's arguments (or not at all: then it is now)."""
    try:
        with _topology_channel(r) as ch:
            rabbit.declare_shadow_queue(ch, r)
        return True
    except rabbit.MirrorQueueMismatch:
        return False


@contextlib.contextmanager
def _topology_channel(r: Any) -> Iterator[Any]:
    """A py-amqp channel for declarations and (un)bindings (the bridge's own client has no
    unbind; no message is read on this connection)."""
    import amqp

    conn = amqp.Connection(
        host=f"{r.host}:{r.port}",
        userid=r.username,
        password=r.password.get_secret_value(),
        virtual_host=r.vhost,
        ssl=r.ssl,
        connect_timeout=10,
    )
    conn.connect()
    try:
        yield conn.channel()
    finally:
        try:
            conn.close()
        except Exception:  # the server closed it already (a refused declaration)
            conn.collect()


def _cassandra_store(settings: Settings, closers: list[Callable[[], None]]) -> Any:
    import storage
    from storage.cassandra import Prepared
    from storage.overflow import OverflowStore

    storage.apply_schema(settings.cassandra, [storage.OPS])  # the table, if missing
    session = storage.connect(settings.cassandra)
    closers.append(session.cluster.shutdown)
    return OverflowStore(Prepared(session), settings.cassandra)
