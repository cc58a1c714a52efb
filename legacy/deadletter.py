"""The dead-letter queue: what legacy could not count, kept with its reason.

A dead letter is a JSON message published through the default exchange to the durable
queue `settings.rabbitmq.dead_letter_queue`, with publisher confirms, before the original
is acked: nothing is acked into oblivion. Reasons are the contract's (SEMANTICS.md §1) for
invalid events, plus these for messages that are not a decodable aggregation task.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import amqp
from kombu import Connection, Producer, Queue

from settings import RabbitSettings

CONTENT_DISALLOWED = "content_disallowed"  # not JSON (pickle, yaml...): never deserialized
UNDECODABLE = "undecodable"  # claims JSON but the body does not decode
BAD_TASK_MESSAGE = "bad_task_message"  # decodes, but is not [[raw_event], {}, {...}]
UNKNOWN_TASK = "unknown_task"  # no task header, or another task's name

MESSAGE_REASONS = (CONTENT_DISALLOWED, UNDECODABLE, BAD_TASK_MESSAGE, UNKNOWN_TASK)


def dead_letter_queue(settings: RabbitSettings) -> Queue:
    return Queue(settings.dead_letter_queue, durable=True, auto_delete=False)


def record(reason: str, detail: str, *, body: bytes | str | None, event_id: str | None = None,
           task_id: str | None = None, content_type: str | None = None) -> dict[str, Any]:
    """The dead letter of one message: the original task body, reason, detail, event_id."""
    out: dict[str, Any] = {
        "reason": reason,
        "detail": detail[:2000],
        "event_id": event_id,
        "task_id": task_id,
        "content_type": content_type,
        "dead_lettered_at": datetime.now(UTC).isoformat(),
    }
    if isinstance(body, bytes):
        try:
            out["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            out["body"] = None
            out["body_b64"] = base64.b64encode(body).decode("ascii")
    else:
        out["body"] = body
    return out


def amqp_message(letter: Mapping[str, Any]) -> amqp.Message:
    """A dead letter as a persistent py-amqp message (for publishers without kombu)."""
    return amqp.Message(json.dumps(letter, ensure_ascii=False).encode("utf-8"),
                        content_type="application/json", content_encoding="utf-8",
                        delivery_mode=2)


def publish(producer: Producer, settings: RabbitSettings, letter: Mapping[str, Any]) -> None:
    """Publish a dead letter (persistent; the caller's connection confirms publishes)."""
    producer.publish(
        json.dumps(letter, ensure_ascii=False).encode("utf-8"),
        exchange="",
        routing_key=settings.dead_letter_queue,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        declare=[dead_letter_queue(settings)],
        retry=True,
        retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
    )


def read(settings: RabbitSettings, limit: int = 1000, ack: bool = False) -> list[dict[str, Any]]:
    """Up to `limit` dead letters, oldest first; left in the queue unless `ack`."""
    letters: list[dict[str, Any]] = []
    with Connection(settings.url()) as conn:
        channel = conn.channel()
        dead_letter_queue(settings)(channel).declare()
        queue = dead_letter_queue(settings)(channel)
        messages = []
        while len(letters) < limit:
            message = queue.get(no_ack=False, accept=["json"])
            if message is None:
                break
            messages.append(message)
            letters.append(json.loads(message.body))
        for message in messages:
            if ack:
                message.ack()
            else:
                message.requeue()
    return letters
