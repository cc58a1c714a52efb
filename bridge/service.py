"""The bridge loop: consume RabbitMQ, produce to Kafka, ack after Kafka confirmed.

At-least-once with bounded memory:
- RabbitMQ delivers at most `prefetch` unacked messages; each becomes a Kafka record
  (events topic, or DLQ topic when it cannot be decoded), produced asynchronously;
- a message is acked only when Kafka's delivery report for its record arrived, with
  `multiple=True` up to the highest contiguous confirmed delivery tag;
- a Kafka error leaves the message unacked and re-produces it with backoff; a record
  Kafka refuses for good (size) is dead-lettered instead;
- a producer that cannot deliver any more is replaced (the old channel dropped, so its
  unacked messages come back redelivered and go to the new producer): a fatal error (the
  idempotent producer's, e.g. a sequence desynchronised by a broker restart: reported by
  `error_cb`, by `_FATAL` delivery reports and by `produce()` raising `_FATAL`; never by
  `KafkaError.fatal()` of a delivery report, which confluent_kafka leaves False), or no
  record delivered for longer than `message.timeout.ms` while records wait (Kafka down that
  long, or a producer wedged after a broker restart, whose records only time out);
- SIGTERM: stop consuming, flush Kafka, ack what was confirmed, close (the rest returns to
  the queue);
- a lost connection or channel: reconnect with backoff; delivery tags of the old channel
  are dropped (never acked on the new one, which would close it again: no crash loop), and
  their messages come back redelivered (counted: they may be duplicates in Kafka).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from bridge import rabbit
from bridge.amqp091 import AmqpError, Connection
from bridge.decode import Bad, Good, Message, Reason, dead_letter, decode, last_resort
from bridge.kafka import ensure_topics, make_producer, producer_config
from bridge.status import Counts, Minutes, serve_metrics, status_path, write_status
from counting.text import escape
from services import targets
from settings.model import Settings

log = logging.getLogger("abacus.bridge")

_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
    }
)
STALL_MARGIN_S = 10.0  # nothing delivered for message.timeout.ms + this: replace the producer
MAX_BACKOFF_S = 30.0
DLQ_FALLBACK_BYTES = 256 * 1024  # a refused dead letter is retried with this head only


class KafkaFatal(Exception):
    """The producer hit a fatal error (e.g. idempotence state lost) or stopped delivering:
    it must be replaced."""


@dataclass(slots=True)
class Pending:
    """One consumed message until it is acked."""

    gen: int
    tag: int
    msg: Message
    received_ms: int
    record: Good | Bad
    done: bool = False
    attempts: int = 0
    retry_at: float = 0.0


class Bridge:
    """RabbitMQ queue -> Kafka topic (+ DLQ topic), acked after delivery."""

    def __init__(
        self,
        settings: Settings,
        mode: rabbit.Mode,
        *,
        prefetch: int | None = None,
        metrics_port: int | None = None,
        status_file: Path | None = None,
        should_stop: Callable[[Counts], bool] | None = None,
        producer_overrides: dict[str, Any] | None = None,
        flush_timeout_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.rabbit = settings.rabbitmq
        self.kafka = settings.kafka
        self.queue = rabbit.queue_for(mode, self.rabbit)
        self.topic = self.kafka.topic
        self.dlq_topic = self.kafka.dlq_topic
        self.prefetch = prefetch or self.rabbit.prefetch
        self.metrics_port = metrics_port  # None: no metrics; 0: a free port
        self._metrics_server: tuple[Any, Any] | None = None
        self._target: Path | None = None
        self.status_file = status_file or status_path(settings.services.data_dir, mode)
        self.should_stop = should_stop
        self.producer_overrides = producer_overrides or {}
        # JSON logs: librdkafka's own lines (its clients write them to stderr) as our events
        self._kafka_log = (
            logging.getLogger("abacus.bridge.kafka")
            if settings.services.log_format == "json"
            else None
        )
        self.flush_timeout_s = flush_timeout_s
        self.counts = Counts()
        self.minutes = Minutes()
        self._stop = False
        self._gen = 0
        self._pending: deque[Pending] = deque()
        self._retries: list[Pending] = []
        self._conn: Connection | None = None
        self._ctag = ""
        self._producer: Any = None
        self._started_at = time.time()
        self._last_error = ""
        self._last_tick = 0.0
        self._connected = False
        self._fatal: Any = None
        self.producers = 0  # producers created (1 + replacements)
        timeout_ms = producer_config(self.kafka, **self.producer_overrides)["message.timeout.ms"]
        self._stall_s = float(timeout_ms) / 1000 + STALL_MARGIN_S
        self._progress = time.monotonic()  # last delivery, or nothing waiting for one

    # ------------------------------------------------------------ control

    def stop(self, *_: object) -> None:
        """Ask the loop to finish (signal-safe)."""
        self._stop = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def in_flight(self) -> int:
        return len(self._pending)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop and time.monotonic() < deadline:
            if self._producer is not None:
                self._producer.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            else:
                time.sleep(0.1)
            self._tick()

    def _error(self, what: str, exc: BaseException | str) -> None:
        # an error's text may quote a publisher's bytes: escaped, so that every log line and
        # status file can be written
        self._last_error, _ = escape(f"{what}: {exc}"[:2000])
        log.warning("%s", self._last_error)

    # ------------------------------------------------------------ main loop

    def run(self) -> Counts:
        """Run until stopped; return the final counts."""
        if self.metrics_port is not None:
            self._serve_metrics()
        self._tick(force=True)
        backoff = 1.0
        while not self._stop:
            try:
                ensure_topics(self.kafka, [self.topic, self.dlq_topic], logger=self._kafka_log)
                break
            except (KafkaException, RuntimeError) as exc:
                self._error("Kafka not ready", exc)
                self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        self._producer = self._new_producer()
        backoff = 1.0
        try:
            while not self._stop:
                try:
                    self._connect()
                    backoff = 1.0
                    self._consume()
                except KafkaFatal as exc:
                    # unacked messages come back redelivered; a fresh producer sends them
                    self.counts.reconnects += 1
                    self._error("Kafka producer failed, replacing it", exc)
                    self._drop_connection()
                    self._replace_producer()
                    self._sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                except (AmqpError, OSError) as exc:
                    if self._stop:
                        break
                    self.counts.reconnects += 1
                    self._error(f"RabbitMQ connection lost, reconnecting in {backoff:.0f}s", exc)
                    self._drop_connection()
                    self._sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                except Exception as exc:
                    # a bug outside one message's handling (which dead-letters instead):
                    # start over on a fresh channel rather than exit; unacked messages
                    # come back redelivered
                    log.exception("unexpected error in the bridge loop")
                    self.counts.reconnects += 1
                    self._error(f"unexpected error, reconnecting in {backoff:.0f}s", exc)
                    self._drop_connection()
                    self._sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._shutdown()
        return self.counts

    def _new_producer(self) -> Any:
        self.producers += 1
        self._progress = time.monotonic()
        conf = {"error_cb": self._kafka_error, **self.producer_overrides}
        if self._kafka_log is not None:
            conf.setdefault("logger", self._kafka_log)
        return make_producer(self.kafka, **conf)

    def _kafka_error(self, err: Any) -> None:
        """librdkafka's error callback (served by poll, on this thread). Only here does
        confluent_kafka mark an error fatal; the rest (brokers down, reconnects) librdkafka
        handles by itself."""
        if err.fatal():
            self._fatal = err
        else:
            log.info("Kafka client: %s", err)

    def _replace_producer(self) -> None:
        old, self._fatal = self._producer, None
        with contextlib.suppress(KafkaException, RuntimeError):
            # its delivery reports are never served: the records' messages come back
            # redelivered on the new channel
            old.purge(in_queue=True, in_flight=True, blocking=False)
        del old
        self._producer = self._new_producer()

    def _connect(self) -> None:
        conn = rabbit.connect(self.rabbit)
        self._conn = conn
        self._gen += 1
        self._pending = deque()
        self._retries = []
        self._ctag = rabbit.setup_consumer(conn, self.mode, self.rabbit, self.prefetch)
        self._connected = True
        log.info(
            "bridge %s consuming %s on %s:%s -> %s (prefetch %d)",
            self.mode,
            self.queue,
            self.rabbit.host,
            self.rabbit.port,
            self.topic,
            self.prefetch,
        )

    def _drop_connection(self) -> None:
        """Forget the old channel: its delivery tags are meaningless from now on."""
        self._connected = False
        if self._conn is not None:
            self._conn.abort()
        self._conn = None
        self._pending = deque()
        self._retries = []

    def _consume(self) -> None:
        conn = self._conn
        assert conn is not None
        producer = self._producer
        handle = self._handle
        while not self._stop:
            waiting = len(producer) > 0
            deliveries = conn.read_deliveries(0.0 if waiting else 0.05)
            for d in deliveries:
                handle(d)
            producer.poll(0.0 if deliveries or not waiting else 0.002)
            self._ack_ready()
            if self._retries:
                self._retry_due()
            if self._fatal is not None:
                raise KafkaFatal(str(self._fatal))
            now = time.monotonic()
            if now - self._last_tick >= 1.0:
                conn.heartbeat_tick()
                self._tick()
                self._check_stall(now)
            if self.should_stop is not None and self.should_stop(self.counts):
                self._stop = True

    def _check_stall(self, now: float) -> None:
        """Records waiting (in the producer or for a retry) and none delivered for longer
        than message.timeout.ms: the producer is wedged (or Kafka down that long): replace
        it. Seen after a Kafka restart: an idempotent producer whose records only ever
        timed out, re-produced into it forever, and the bridge never drained."""
        if not len(self._producer) and not self._retries:
            self._progress = now
        elif now - self._progress > self._stall_s and self._fatal is None:
            self._fatal = (
                f"nothing delivered for {now - self._progress:.0f}s with "
                f"{len(self._producer)} record(s) in the producer, {len(self._retries)} "
                f"waiting for a retry; last error: {self._last_error}"
            )

    def _handle(self, d: Any) -> None:
        counts = self.counts
        counts.consumed += 1
        if d.redelivered:
            counts.redelivered += 1
        received_ms = int(time.time() * 1000)
        try:
            record = decode(d, received_ms)
        except Exception as exc:  # a decoder bug must not stop the bridge: dead-letter it
            record = self._bridge_error(d, received_ms, "decoding", exc)
        p = Pending(self._gen, d.delivery_tag, d, received_ms, record)
        self._pending.append(p)
        self._produce(p)

    def _bridge_error(self, msg: Message, received_ms: int, stage: str, exc: BaseException) -> Bad:
        """The dead letter of a message whose handling raised unexpectedly (`bridge_error`);
        logged with its traceback, since it is a bug to fix."""
        detail, _ = escape(f"unexpected error while {stage}: {type(exc).__name__}: {exc}")
        log.exception("dead-lettering a message: %s", detail)
        self._last_error = detail[:2000]
        try:
            return dead_letter(msg, received_ms, Reason.BRIDGE_ERROR, detail)
        except Exception:  # the usual dead letter cannot be built: the plainest one
            return last_resort(msg, received_ms, detail)

    def _produce(self, p: Pending) -> None:
        rec = p.record
        if type(rec) is Good:
            topic, key = self.topic, rec.key
        else:
            topic, key = self.dlq_topic, None
        while True:
            try:
                self._producer.produce(
                    topic,
                    rec.value,
                    key,
                    headers=rec.headers,
                    on_delivery=partial(self._delivered, p),
                )
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._failed(p, exc.args[0])
                return
            except Exception as exc:  # e.g. a header the client cannot encode
                if isinstance(rec, Bad) and rec.reason is Reason.BRIDGE_ERROR:
                    if rec.headers and rec.headers[0][0] == "reason":  # already the plainest
                        raise
                    p.record = last_resort(p.msg, p.received_ms, rec.detail)
                else:
                    p.record = self._bridge_error(p.msg, p.received_ms, "producing", exc)
                rec = p.record
                topic, key = self.dlq_topic, None

    def _delivered(self, p: Pending, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed(p, err)
            return
        self._progress = time.monotonic()
        p.done = True
        rec = p.record
        if isinstance(rec, Good):
            self.counts.produced += 1
        else:
            self.counts.dead_lettered += 1
            by = self.counts.dead_lettered_by_reason
            by[rec.reason.value] = by.get(rec.reason.value, 0) + 1

    def _failed(self, p: Pending, err: Any) -> None:
        self.counts.kafka_errors += 1
        code = err.code() if hasattr(err, "code") else None
        if getattr(err, "fatal", lambda: False)() or code == KafkaError._FATAL:
            # re-producing into this producer would fail (or wait) again: run() replaces it
            # and the message comes back redelivered
            if self._fatal is None:
                self._fatal = err
            return
        if type(p.record) is Good and code in _PERMANENT:
            detail = f"Kafka refused the record: {err}"
            self._error("dead-lettering a record Kafka refused", err)
            p.record = dead_letter(p.msg, p.received_ms, Reason.KAFKA_REJECTED, detail)
            self._produce(p)
            return
        rec = p.record
        if isinstance(rec, Bad) and code in _PERMANENT and len(rec.value) > DLQ_FALLBACK_BYTES:
            # a DLQ topic with a smaller max.message.bytes than ours: keep the head only
            self._error("DLQ record refused, truncating it", err)
            headers = [*rec.headers, ("truncated_to", str(DLQ_FALLBACK_BYTES).encode())]
            p.record = Bad(rec.reason, rec.detail, rec.value[:DLQ_FALLBACK_BYTES], headers)
            self._produce(p)
            return
        if p.gen != self._gen:
            return  # its message will come back redelivered on the new channel
        p.attempts += 1
        delay = min(0.2 * 2**p.attempts, MAX_BACKOFF_S)
        p.retry_at = time.monotonic() + delay
        self._retries.append(p)
        if p.attempts == 1 or p.attempts % 10 == 0:
            self._error(f"Kafka delivery failed (attempt {p.attempts}, retry in {delay:.1f}s)", err)

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = [p for p in self._retries if p.retry_at <= now]
        if not due:
            return
        self._retries = [p for p in self._retries if p.retry_at > now]
        for p in due:
            if p.gen == self._gen:
                self._produce(p)

    def _ack_ready(self) -> None:
        pending = self._pending
        if not pending or not pending[0].done:
            return
        n = 0
        last = 0
        while pending and pending[0].done:
            last = pending.popleft().tag
            n += 1
        assert self._conn is not None
        self._conn.basic_ack(last, multiple=True)
        self.counts.acked += n

    def _serve_metrics(self) -> None:
        """The Prometheus endpoint (port 0: a free one), announced to the local Prometheus
        (`services.targets`) until the bridge stops."""
        host = self.settings.bridge.metrics_host
        self.metrics_port = self.metrics_port or targets.free_port(host)
        self._metrics_server = serve_metrics(
            self.metrics_port, self.counts, self.mode, self.in_flight, host
        )
        name = f"{self.mode}-{self.queue}"  # a restarted bridge rewrites the same file
        self._target = targets.register(
            self.settings, "bridge", name, targets.address(host, self.metrics_port)
        )

    # ------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        conn = self._conn
        if conn is not None and self._connected:
            try:
                conn.basic_cancel(self._ctag)
            except (AmqpError, OSError) as exc:
                self._error("cancel failed", exc)
                self._drop_connection()
                conn = None
        if self._producer is not None:
            left = self._producer.flush(self.flush_timeout_s)
            if left:
                self._error("shutdown", f"{left} record(s) not confirmed by Kafka; left unacked")
        if conn is not None and self._conn is not None:
            try:
                self._ack_ready()
            except (AmqpError, OSError) as exc:
                self._error("final ack failed", exc)
            conn.close()
        self._conn = None
        self._connected = False
        self._tick(force=True, stopped=True)
        if self._target is not None:
            targets.unregister(self._target)
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
            server.server_close()
        log.info("bridge stopped: %s", self.counts.snapshot())

    # ------------------------------------------------------------ status

    def status(self, stopped: bool = False) -> dict[str, Any]:
        c = self.counts
        return {
            "mode": self.mode,
            "queue": self.queue,
            "topic": self.topic,
            "dlq_topic": self.dlq_topic,
            "prefetch": self.prefetch,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "updated_at": time.time(),
            "stopped": stopped,
            "connected": self._connected,
            "consumer_tag": self._ctag if self._connected else None,
            "in_flight": len(self._pending),
            "totals": c.snapshot(),
            "dead_lettered_by_reason": dict(c.dead_lettered_by_reason),
            "per_minute": self.minutes.table(c),
            "last_error": self._last_error,
            "metrics_port": self.metrics_port,
        }

    def _tick(self, force: bool = False, stopped: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_tick < 1.0:
            return
        self._last_tick = now
        self.minutes.tick(time.time(), self.counts)
        try:
            write_status(self.status_file, self.status(stopped))
        except OSError as exc:
            self._error("cannot write the status file", exc)
