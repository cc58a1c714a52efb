"""Publishing events as aggregation task messages, at a controlled rate.

Each raw event line becomes one Celery protocol-2 task message (`legacy.protocol`),
published persistent to the exchange with the routing key: the legacy queue (and, in
shadow mode, the bridge's mirror queue) receives it. Publisher confirms are streamed: up
to `window` messages are in flight, a nacked one is published again, and the call returns
only when the broker has confirmed every message (waiting for each confirm in turn would
cost a disk sync per message: ~50 messages/s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import amqp
from kombu import Connection

from legacy import deadletter
from legacy.protocol import task_message
from legacy.topology import declare_topology
from settings import RabbitSettings

DEFAULT_WINDOW = 1000


@dataclass
class PublishReport:
    published: int = 0
    dead_lettered: int = 0  # lines that cannot be a task message (not UTF-8)
    republished: int = 0  # nacked by the broker, published again
    bytes: int = 0
    elapsed_s: float = 0.0
    rate_target: float = 0.0  # events/s asked for; 0 = as fast as possible
    task_ids: list[str] = field(default_factory=list)
    published_at: list[float] = field(default_factory=list)  # time.time() before each publish

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, float | int]:
        return {"published": self.published, "dead_lettered": self.dead_lettered,
                "republished": self.republished, "bytes": self.bytes,
                "elapsed_s": round(self.elapsed_s, 3), "rate": round(self.rate, 1),
                "rate_target": self.rate_target}


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
        self._channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
        self.outstanding[self._next_tag] = (message, exchange, routing_key)
        self._next_tag += 1

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
                raise TimeoutError(f"the broker did not confirm {len(self.outstanding)} "
                                   f"messages within {timeout_s:.0f} s")
            try:
                self._conn.drain_events(timeout=1.0)
            except TimeoutError:
                continue


class Pacer:
    """Holds a steady rate: the i-th call returns no earlier than start + i / rate, and
    spends the wait processing confirms."""

    def __init__(self, rate: float, confirms: _Confirms) -> None:
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


def publish_lines(settings: RabbitSettings, lines: Iterable[str | bytes], rate: float = 0.0,
                  on_progress: Callable[[int], None] | None = None,
                  window: int = DEFAULT_WINDOW, keep_ids: bool = False) -> PublishReport:
    """Publish one task message per raw event line; `rate` in events/s (0 = unthrottled).

    Lines are published as they are (invalid events included: the worker dead-letters
    them). Returns when every message is confirmed. `keep_ids` records each task id and
    its publish time.
    """
    report = PublishReport(rate_target=rate)
    with deadletter.connection(settings) as conn:
        conn.connect()
        channel = conn.channel()
        declare_topology(channel, settings)
        confirms = _Confirms(conn, channel)
        pacer = Pacer(rate, confirms)
        start = time.monotonic()
        for line in lines:
            pacer.wait()
            try:
                raw = line.decode("utf-8") if isinstance(line, bytes) else line
            except UnicodeDecodeError as exc:
                # A task argument is text: bytes that are not UTF-8 cannot travel as one.
                # They are what the contract calls not_json; dead-letter them here.
                letter = deadletter.record("not_json", f"the bytes are not UTF-8: {exc}",
                                           body=bytes(line))
                confirms.publish(deadletter.amqp_message(letter), "",
                                 settings.dead_letter_queue)
                report.dead_lettered += 1
            else:
                task = task_message(raw)
                if keep_ids:
                    report.task_ids.append(task.task_id)
                    report.published_at.append(time.time())
                message = amqp.Message(task.body, application_headers=task.headers,
                                       **task.properties)
                confirms.publish(message, settings.exchange, settings.routing_key)
                report.published += 1
                report.bytes += len(task.body)
            if on_progress is not None:
                on_progress(1)
            if len(confirms.outstanding) >= window:
                confirms.wait_below(window // 2)
            while confirms.nacked:
                confirms.publish(*confirms.nacked.pop())
                report.republished += 1
        while True:
            confirms.wait_below(0)
            if not confirms.nacked:
                break
            while confirms.nacked:
                confirms.publish(*confirms.nacked.pop())
                report.republished += 1
        report.elapsed_s = time.monotonic() - start
    return report
