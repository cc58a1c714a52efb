"""The worker's message consumer, made to dead-letter what it cannot run.

Celery's stock consumer acks an undecodable message after logging it, drops an unknown
task, and (protocol 2) defers decoding to the pool, where a pickle body or a truncated
JSON body becomes an error that is acked into oblivion. This consumer screens each message
in the main process first: its size (before any parsing: a body that cannot hold a 1 MiB
event is `too_large`, so the main process never parses more than `MAX_TASK_BODY_BYTES`),
content type (JSON only: a pickle body is never deserialized), body decoding
(`counting.events.loads`: no integer is converted at a cost that grows with its digits),
the task name and the argument shape; what fails goes to the dead-letter queue with its
reason before it is acked.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer
from vine import promise

from counting.events import loads
from legacy import deadletter
from legacy.aggregation import count_stats, redis_client
from legacy.keys import RedisKeys
from legacy.retry import RetryPolicy
from wire.task import CONTENT_TYPE, MAX_TASK_BODY_BYTES, TASK_NAME, envelope_problem

log = logging.getLogger(__name__)


# Celery's pool decodes the body again with kombu's json, which refuses integers over
# Python's digit limit: `loads` returns those as a non-int (`counting.model.BigInt`), and
# such an envelope is screened out here rather than fail in the pool.
_JSON_TYPES = (str, int, float, bool, type(None), dict, list)


def _huge_int(value: Any, depth: int = 0) -> bool:
    if not isinstance(value, _JSON_TYPES):
        return True
    if depth > 50:
        return False
    if isinstance(value, dict):
        return any(_huge_int(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_huge_int(v, depth + 1) for v in value)
    return False


def _header_problem(headers: dict[str, Any]) -> str | None:
    """Celery headers that would make the worker drop the task silently (an ETA it cannot
    convert, an expiry in the past: rejected or revoked, and acked) or fail outside the
    task (a time limit that is not two numbers): legacy's tasks carry none of them."""
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return f"the id header must be a non-empty string, got {type(task_id).__name__}"
    for name in ("eta", "expires"):
        if headers.get(name) is not None:
            return f"legacy tasks carry no {name} header, got {str(headers[name])[:80]!r}"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limits
        )
    ):
        return f"the timelimit header must be [soft, hard] seconds, got {str(limits)[:80]!r}"
    for name in ("retries",):
        value = headers.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"the {name} header must be an integer, got {type(value).__name__}"
    for name in (
        "root_id",
        "parent_id",
        "group",
        "shadow",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "lang",
    ):
        value = headers.get(name)
        if value is not None and not isinstance(value, str):
            return f"the {name} header must be a string, got {type(value).__name__}"
    return None


def screen(message: Any) -> tuple[str, str] | None:
    """(reason, detail) when a message is not a decodable aggregation task, else None."""
    raw = message.body
    size = len(raw) if isinstance(raw, bytes | str) else 0
    if size > MAX_TASK_BODY_BYTES:
        return deadletter.TOO_LARGE, (
            f"task body is {size} bytes, over {MAX_TASK_BODY_BYTES}: "
            "it cannot hold an event of at most 1 MiB"
        )
    if message.content_type != CONTENT_TYPE:  # JSON only; kombu passes a typeless body raw
        return (
            deadletter.CONTENT_DISALLOWED,
            f"content type {message.content_type!r}, only {CONTENT_TYPE!r} is accepted",
        )
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        body = loads(text)
    except RecursionError:
        return deadletter.UNDECODABLE, "the body is nested too deeply to parse"
    except Exception as exc:
        return deadletter.UNDECODABLE, f"{type(exc).__name__}: {exc}"
    headers = message.headers or {}
    task = headers.get("task")
    if task != TASK_NAME:
        return deadletter.UNKNOWN_TASK, f"task header {task!r}, expected {TASK_NAME!r}"
    if problem := _header_problem(headers):
        return deadletter.BAD_TASK_MESSAGE, problem
    if problem := envelope_problem(body):
        return deadletter.BAD_TASK_MESSAGE, problem
    # What Celery's pool needs beyond the envelope to run the task: an embed it can read.
    if not (body[2] is None or isinstance(body[2], dict)):
        return deadletter.BAD_TASK_MESSAGE, "the body's embed is neither null nor an object"
    if _huge_int(body[2]):
        return (
            deadletter.BAD_TASK_MESSAGE,
            "the body's embed holds an integer longer than Python converts",
        )
    return None


class DeadLetteringConsumer(Consumer):
    _stats_client: Any = None

    def create_task_handler(self, promise: Any = promise) -> Any:
        handle = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                problem = screen(message)
            except Exception as exc:  # a screen that fails must not stop the worker either
                problem = (deadletter.UNDECODABLE, f"{type(exc).__name__}: {exc}")
            if problem is not None:
                return self._dead_letter(message, *problem)
            try:
                return handle(message)
            except self.connection_errors + self.channel_errors:
                raise  # Celery's own recovery: reconnect, redeliver
            except Exception as exc:
                # Celery refused the message outside any task: it would end the worker
                if getattr(message, "acknowledged", False):
                    log.exception("a task message failed after it was acked")
                    return None
                return self._dead_letter(
                    message,
                    deadletter.BAD_TASK_MESSAGE,
                    f"Celery could not run it: {type(exc).__name__}: {exc}",
                )

        return on_task_received

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        runtime = self.app.abacus_runtime
        headers = message.headers or {}
        letter = deadletter.record(
            reason,
            detail,
            body=message.body,
            task_id=headers.get("id"),
            content_type=message.content_type,
        )
        try:
            runtime.dead_letter(letter)
        except Exception:
            log.exception("could not dead-letter a %s message; it is requeued", reason)
            message.requeue()
            return
        message.ack()
        log.warning("dead-lettered a message: %s (%s)", reason, detail)
        if self._stats_client is None:
            self._stats_client = redis_client(runtime.settings, runtime.options.redis_timeout_s)
        # the main process: never blocks the event loop for long on Redis
        count_stats(
            self._stats_client,
            RedisKeys.of(runtime.settings.redis),
            {"dead_lettered": 1, "dead:" + reason: 1},
            RetryPolicy(budget_s=0),
        )

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
