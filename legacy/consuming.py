"""Legacy's consuming flag: whether legacy's workers may consume the legacy queue.

The hand-over (`legacy.handover`) sets it "off" (`RedisKeys.consuming`) before it cancels the
workers' consumers, and clears it when legacy resumes. Every worker obeys it each time its
task consumer starts (`ConsumingFlagStep`, a consumer bootstep run after Celery's `Tasks`
step and before the event loop issues basic.consume): at worker start and after every
broker reconnect, when Celery rebuilds its task consumer from its selected queues. A worker
that cannot read the flag (Redis unreachable) does not consume either, and reads it again
every `RECHECK_S` until it can.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ClassVar

from celery import bootsteps

from legacy.aggregation import redis_client
from legacy.keys import RedisKeys
from settings import Settings

log = logging.getLogger(__name__)

OFF = b"off"
RECHECK_S = 5.0  # a worker that could not read the flag reads it again this often
FLAG_TIMEOUT_S = 2.0  # the Redis timeout of a flag read or write


def consuming_allowed(settings: Settings) -> bool:
    """Whether legacy's workers may consume the legacy queue (the flag is not "off")."""
    client = redis_client(settings, FLAG_TIMEOUT_S)
    try:
        return bool(client.get(RedisKeys.of(settings.redis).consuming) != OFF)
    finally:
        client.close()


def set_consuming(settings: Settings, allowed: bool) -> None:
    """Set the flag ("off") or clear it; workers read it when their consumer starts."""
    client = redis_client(settings, FLAG_TIMEOUT_S)
    key = RedisKeys.of(settings.redis).consuming
    try:
        if allowed:
            client.delete(key)
        else:
            client.set(key, OFF)
    finally:
        client.close()


class ConsumingFlagStep(bootsteps.StartStopStep):
    """Runs each time the worker's task consumer starts (worker start, broker reconnect):
    the flag decides whether the legacy queue is consumed. Celery rebuilds the task consumer
    from its selected queues on a reconnect, and a restarted worker from its configuration;
    this step makes the flag, not what the last broadcast told the worker, the truth."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._recheck: Any = None

    def start(self, c: Any) -> None:
        settings: Settings = c.app.abacus_runtime.settings
        queue = settings.rabbitmq.legacy_queue
        try:
            allowed: bool | None = consuming_allowed(settings)
        except Exception as exc:
            allowed = None
            log.error(
                "cannot read legacy's consuming flag (%s: %s): not consuming %s until it can "
                "be read (every %.0f s)",
                type(exc).__name__,
                str(exc)[:200],
                queue,
                RECHECK_S,
            )
        if allowed:
            self._select(c, queue)
            return
        c.cancel_task_queue(queue)  # before the event loop's basic.consume: none is sent
        if allowed is False:
            log.warning(
                "legacy consuming is off (the hand-over flag): not consuming %s; "
                "`abacus legacy resume` (or the cutover's rollback) resumes",
                queue,
            )
        else:
            self._recheck = c.timer.call_repeatedly(RECHECK_S, self._read_again, (c, queue))

    @staticmethod
    def _select(c: Any, queue: str) -> None:
        """Consume the queue even if a broadcast `cancel_consumer` (or this step) deselected
        it earlier: Celery keeps a deselection across reconnects, the flag decides."""
        queues = c.app.amqp.queues
        if queue in queues and not any(q.name == queue for q in c.task_consumer.queues):
            c.task_consumer.add_queue(queues.select_add(queues[queue]))

    def _read_again(self, c: Any, queue: str) -> None:
        try:
            allowed = consuming_allowed(c.app.abacus_runtime.settings)
        except Exception:
            return  # still unknown: not consuming, read again later
        self._cancel_recheck()
        if allowed:
            log.warning("legacy's consuming flag is readable again and on: consuming %s", queue)
            c.call_soon(c.add_task_queue, queue)  # in the consumer's own thread

    def _cancel_recheck(self) -> None:
        if self._recheck is not None:
            with contextlib.suppress(Exception):
                self._recheck.cancel()
            self._recheck = None

    def stop(self, c: Any) -> None:
        self._cancel_recheck()

    def shutdown(self, c: Any) -> None:
        self._cancel_recheck()
