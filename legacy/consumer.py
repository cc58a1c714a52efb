"""The worker's message consumer, made to dead-letter what it cannot run.

Celery's stock consumer acks an undecodable message after logging it, drops an unknown
task, and (protocol 2) defers decoding to the pool, where a pickle body or a truncated
JSON body becomes an error that is acked into oblivion. This consumer screens each message
in the main process first: content type (JSON only: a pickle body is never deserialized),
body decoding, the task name and the argument shape; what fails goes to the dead-letter
queue with its reason before it is acked.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from vine import promise

from legacy import deadletter
from legacy.aggregation import redis_client
from legacy.keys import RedisKeys
from legacy.protocol import CONTENT_TYPE, TASK_NAME

log = logging.getLogger(__name__)


def screen(message: Any) -> tuple[str, str] | None:
    """(reason, detail) when a message is not a decodable aggregation task, else None."""
    if message.content_type != CONTENT_TYPE:  # JSON only; kombu passes a typeless body raw
        return deadletter.CONTENT_DISALLOWED, f"content type {message.content_type!r}, " \
            f"only {CONTENT_TYPE!r} is accepted"
    try:
        body = message.decode()
    except ContentDisallowed as exc:
        return deadletter.CONTENT_DISALLOWED, f"content type {message.content_type!r}: {exc}"
    except Exception as exc:
        return deadletter.UNDECODABLE, f"{type(exc).__name__}: {exc}"
    task = (message.headers or {}).get("task")
    if task != TASK_NAME:
        return deadletter.UNKNOWN_TASK, f"task header {task!r}, expected {TASK_NAME!r}"
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[0], list)
            and isinstance(body[1], dict) and (body[2] is None or isinstance(body[2], dict))):
        return deadletter.BAD_TASK_MESSAGE, "body is not a Celery protocol-2 [args, kwargs, embed]"
    args, kwargs = body[0], body[1]
    if len(args) != 1 or kwargs or not isinstance(args[0], str):
        return deadletter.BAD_TASK_MESSAGE, "the task takes one argument, the raw event text"
    return None


class DeadLetteringConsumer(Consumer):
    _stats_client: Any = None

    def create_task_handler(self, promise: Any = promise) -> Any:
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            problem = screen(message)
            if problem is not None:
                return self._dead_letter(message, *problem)
            return handle(message)

        return on_task_received

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        runtime = self.app.abacus_runtime
        headers = message.headers or {}
        letter = deadletter.record(reason, detail, body=message.body,
                                   task_id=headers.get("id"), content_type=message.content_type)
        try:
            runtime.dead_letter(letter)
        except Exception:
            log.exception("could not dead-letter a %s message; it is requeued", reason)
            message.requeue()
            return
        message.ack()
        log.warning("dead-lettered a message: %s (%s)", reason, detail)
        try:
            if self._stats_client is None:
                self._stats_client = redis_client(runtime.settings)
            keys = RedisKeys.of(runtime.settings.redis)
            pipe = self._stats_client.pipeline(transaction=False)
            pipe.hincrby(keys.stats, "dead_lettered", 1)
            pipe.hincrby(keys.stats, "dead:" + reason, 1)
            pipe.execute()
        except Exception:
            log.exception("could not count a dead letter in Redis stats")

    # Celery's own paths for bad messages, in case one gets past the screen.
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, deadletter.UNDECODABLE, f"{type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, deadletter.UNKNOWN_TASK, "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, deadletter.UNKNOWN_TASK, f"unknown task: {exc}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, deadletter.BAD_TASK_MESSAGE, f"{type(exc).__name__}: {exc}")


__all__ = ["DeadLetteringConsumer", "screen"]
