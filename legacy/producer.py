"""Publishing events as aggregation task messages, at a controlled rate.

Each raw event line becomes one Celery protocol-2 task message (`wire.task`),
published persistent to the exchange with the routing key: the legacy queue (and, in
shadow mode, the bridge's mirror queue) receives it. Publisher confirms are streamed: up
to `window` messages are in flight, a nacked one is published again, and the call returns
only when the broker has confirmed every message (waiting for each confirm in turn would
cost a disk sync per message: ~50 messages/s).

A broker that goes away (a RabbitMQ restart: CONNECTION_FORCED, then connections refused)
does not end the call: the publisher reconnects with backoff (for up to
`reconnect_budget_s` per outage), declares the topology again, publishes again every
message whose confirm had not arrived, and goes on. That is at-least-once: a message the
broker had taken but not yet confirmed is then in the queue twice. Every such second
publish is counted in `republished` (with the nacked ones), so an audit can explain an
over-count; `reconnects` counts the outages.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import amqp
from kombu import Connection

from legacy import deadletter
from legacy.topology import declare_topology
from settings import RabbitSettings
from wire.task import task_message

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 1000
RECONNECT_BUDGET_S = 300.0  # per outage: a broker restart, with room to spare
_FIRST_BACKOFF_S, _MAX_BACKOFF_S = 0.2, 5.0

# the broker went away or the connection broke (socket errors are OSErrors); a socket
# *timeout* while waiting for confirms is not one of them (nothing arrived yet)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    amqp.exceptions.ConnectionError,
    amqp.exceptions.RecoverableConnectionError,
    OSError,
    EOFError,
)

Pending = tuple[amqp.Message, str, str]


@dataclass
class PublishReport:
    published: int = 0
    dead_lettered: int = 0  # lines that cannot be a task message (not UTF-8)
    republished: int = 0  # published again: nacked, or unconfirmed when the link broke
    reconnects: int = 0  # times the connection to the broker was lost and made again
    bytes: int = 0
    elapsed_s: float = 0.0
    rate_target: float = 0.0  # events/s asked for; 0 = as fast as possible
    task_ids: list[str] = field(default_factory=list)
    published_at: list[float] = field(default_factory=list)  # time.time() before each publish

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "published": self.published,
            "dead_lettered": self.dead_lettered,
            "republished": self.republished,
            "reconnects": self.reconnects,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate": round(self.rate, 1),
            "rate_target": self.rate_target,
        }


class _Confirms:
    """Publisher confirms on a py-amqp channel, without waiting for each one."""

    def __init__(self, conn: Connection, channel: Any) -> None:
        self._conn, self._channel = conn, channel
        self._next_tag = 1
        self.outstanding: dict[int, tuple[amqp.Message, str, str]] = {}
        self.nacked: list[tuple[amqp.Message, str, str]] = []
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    def _settle(self, tag: int, multiple: bool) -> list[tuple[amqp.Message, str, str]]:
        tags = [t for t in self.outstanding if t <= tag] if multiple else [tag]
        return [self.outstanding.pop(t) for t in tags if t in self.outstanding]

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked += self._settle(tag, multiple)

    def publish(self, message: amqp.Message, exchange: str, routing_key: str) -> None:
        # recorded before it is sent: if sending fails, the message counts as unconfirmed
        # (it may have reached the broker) and is published again after a reconnect
        self.outstanding[self._next_tag] = (message, exchange, routing_key)
        self._next_tag += 1
        self._channel.basic_publish(message, exchange=exchange, routing_key=routing_key)

    def unsettled(self) -> list[Pending]:
        """Every message not confirmed (in publish order) or nacked: what a new connection
        must publish again."""
        return [self.outstanding[t] for t in sorted(self.outstanding)] + self.nacked

    def pump(self, timeout_s: float) -> None:
        """Process confirms arriving within `timeout_s` (0: only those already here)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._conn.drain_events(timeout=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return
            if time.monotonic() >= deadline:
                return

    def wait_below(self, limit: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.outstanding) > limit:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the broker did not confirm {len(self.outstanding)} "
                    f"messages within {timeout_s:.0f} s"
                )
            try:
                self._conn.drain_events(timeout=1.0)
            except TimeoutError:
                continue


class _Link:
    """The connection, its channel and its confirms; a broken connection is made again
    (with backoff, within the budget) and every unsettled message published again."""

    def __init__(
        self, settings: RabbitSettings, report: PublishReport, reconnect_budget_s: float
    ) -> None:
        self._settings, self._report, self._budget_s = settings, report, reconnect_budget_s
        self._conn: Connection | None = None
        self.confirms = self._open([])

    def _open(self, resend: list[Pending]) -> _Confirms:
        """A new connection and channel, topology declared, `resend` published on it."""
        conn = deadletter.connection(self._settings)
        self._conn = conn
        conn.connect()
        channel = conn.channel()
        declare_topology(channel, self._settings)
        confirms = _Confirms(conn, channel)
        for pending in resend:
            confirms.publish(*pending)
            self._report.republished += 1
        return confirms

    def _recover(self, exc: BaseException) -> None:
        deadline = time.monotonic() + self._budget_s
        backoff = _FIRST_BACKOFF_S
        self._report.reconnects += 1
        log.warning(
            "publisher: the connection to RabbitMQ broke (%s: %s); reconnecting, "
            "%d unconfirmed messages will be published again",
            type(exc).__name__,
            str(exc)[:200],
            len(self.confirms.unsettled()),
        )
        while True:
            resend = self.confirms.unsettled()
            self._close()
            try:
                self.confirms = self._open(resend)
                return
            except _CONNECTION_ERRORS as again:
                if time.monotonic() + backoff > deadline:
                    raise ConnectionError(
                        f"could not reconnect to RabbitMQ within {self._budget_s:.0f} s: "
                        f"{type(again).__name__}: {again}"
                    ) from again
                # what the failed attempt had already re-sent stays unsettled
                self.confirms = _Unsent(resend)  # type: ignore[assignment]
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.collect()  # drop the dead socket without a close handshake
            with contextlib.suppress(Exception):
                self._conn.release()
        self._conn = None

    def close(self) -> None:
        self._close()

    def publish(self, message: amqp.Message, exchange: str, routing_key: str) -> None:
        try:
            self.confirms.publish(message, exchange, routing_key)
        except _CONNECTION_ERRORS as exc:  # recorded as unsettled: published again
            self._recover(exc)

    def pump(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.confirms.pump(max(deadline - time.monotonic(), 0.0))
                return
            except TimeoutError:
                return
            except _CONNECTION_ERRORS as exc:
                self._recover(exc)
                if time.monotonic() >= deadline:
                    return

    def wait_below(self, limit: int, timeout_s: float = 120.0) -> None:
        while True:
            try:
                self.confirms.wait_below(limit, timeout_s)
                return
            except TimeoutError:
                raise  # the broker is up but does not confirm: a hung broker fails the call
            except _CONNECTION_ERRORS as exc:
                self._recover(exc)

    def republish_nacked(self) -> None:
        while self.confirms.nacked:
            self.publish(*self.confirms.nacked.pop(0))
            self._report.republished += 1


class _Unsent:
    """Stands in for the confirms of a connection that failed while re-sending: all of
    `resend` is still unsettled."""

    def __init__(self, resend: list[Pending]) -> None:
        self._resend = resend

    def unsettled(self) -> list[Pending]:
        return list(self._resend)


class Pacer:
    """Holds a steady rate: the i-th call returns no earlier than start + i / rate, and
    spends the wait processing confirms."""

    def __init__(self, rate: float, confirms: _Confirms | _Link) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._confirms = confirms
        self._start = time.monotonic()
        self._n = 0

    def wait(self) -> None:
        if self._interval:
            delay = self._start + self._n * self._interval - time.monotonic()
            if delay > 0:
                self._confirms.pump(delay)
        self._n += 1


def publish_lines(
    settings: RabbitSettings,
    lines: Iterable[str | bytes],
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
    window: int = DEFAULT_WINDOW,
    keep_ids: bool = False,
    reconnect_budget_s: float = RECONNECT_BUDGET_S,
) -> PublishReport:
    """Publish one task message per raw event line; `rate` in events/s (0 = unthrottled).

    Lines are published as they are (invalid events included: the worker dead-letters
    them). Returns when every message is confirmed. `keep_ids` records each task id and
    its publish time. A lost connection is made again and the unconfirmed messages are
    published again (`republished`); the call fails only when the broker stays away for
    longer than `reconnect_budget_s`.
    """
    report = PublishReport(rate_target=rate)
    link = _Link(settings, report, reconnect_budget_s)
    try:
        pacer = Pacer(rate, link)
        start = time.monotonic()
        for line in lines:
            pacer.wait()
            try:
                raw = line.decode("utf-8") if isinstance(line, bytes) else line
            except UnicodeDecodeError as exc:
                # A task argument is text: bytes that are not UTF-8 cannot travel as one.
                # They are what the contract calls not_json; dead-letter them here.
                letter = deadletter.record(
                    "not_json",
                    f"the bytes are not UTF-8: {exc}",
                    body=cast(bytes, line),  # only bytes are decoded
                )
                link.publish(deadletter.amqp_message(letter), "", settings.dead_letter_queue)
                report.dead_lettered += 1
            else:
                task = task_message(raw)
                if keep_ids:
                    report.task_ids.append(task.task_id)
                    report.published_at.append(time.time())
                message = amqp.Message(
                    task.body, application_headers=task.headers, **task.properties
                )
                link.publish(message, settings.exchange, settings.routing_key)
                report.published += 1
                report.bytes += len(task.body)
            if on_progress is not None:
                on_progress(1)
            if len(link.confirms.outstanding) >= window:
                link.wait_below(window // 2)
            link.republish_nacked()
        while True:
            link.wait_below(0)
            if not link.confirms.nacked:
                break
            link.republish_nacked()
        report.elapsed_s = time.monotonic() - start
    finally:
        link.close()
    return report
