"""The dead-letter queue: what legacy could not count, kept with its reason.

A dead letter is a JSON message published through the default exchange to the durable
queue `settings.rabbitmq.dead_letter_queue`, with publisher confirms, before the original
is acked: nothing is acked into oblivion. Reasons are the contract's (SEMANTICS.md §1) for
invalid events, plus these for messages that are not a decodable aggregation task, and
`redis_error` / `cassandra_error` / `task_error` for an event legacy failed to count.

A dead letter can be written for any input: every text field goes through
`counting.text.escape` (a lone surrogate or an invalid byte becomes its backslash escape)
and the letter says `"escaped": true` when anything was escaped; a body that is not UTF-8
is also kept exactly, base64-encoded. A body over `MAX_KEPT_BODY_BYTES` is kept cut to
that size (`body_bytes` says how large it was): a dead letter never exceeds what the broker
takes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import amqp
from kombu import Connection, Producer, Queue

from counting.text import escape
from settings import RabbitSettings

CONTENT_DISALLOWED = "content_disallowed"  # not JSON (pickle, yaml...): never deserialized
UNDECODABLE = "undecodable"  # claims JSON but the body does not decode
BAD_TASK_MESSAGE = "bad_task_message"  # decodes, but is not [[raw_event], {}, {...}]
UNKNOWN_TASK = "unknown_task"  # no task header, or another task's name
TOO_LARGE = "too_large"  # the message body cannot hold a 1 MiB event (checked before parsing)
# an event legacy failed to count, after its retries (transient errors) or at once (others)
REDIS_ERROR = "redis_error"
CASSANDRA_ERROR = "cassandra_error"
TASK_ERROR = "task_error"

MESSAGE_REASONS = (CONTENT_DISALLOWED, UNDECODABLE, BAD_TASK_MESSAGE, UNKNOWN_TASK, TOO_LARGE)
FAILURE_REASONS = (REDIS_ERROR, CASSANDRA_ERROR, TASK_ERROR)

MAX_KEPT_BODY_BYTES = 256 * 1024
PUBLISH_TIMEOUT_S = 10.0  # wait for the broker's confirm of a dead letter at most this long


AMQP_TIMEOUT_S = 30.0  # a broker that stops answering (or blocks publishers) fails a call


def connection(settings: RabbitSettings) -> Connection:
    """A kombu connection whose connect, socket reads and writes all time out: a hung
    broker, or a memory alarm blocking publishers, fails the call instead of hanging it."""
    return Connection(
        settings.url(),
        connect_timeout=10,
        transport_options={"read_timeout": AMQP_TIMEOUT_S, "write_timeout": AMQP_TIMEOUT_S},
    )


def dead_letter_queue(settings: RabbitSettings) -> Queue:
    return Queue(settings.dead_letter_queue, durable=True, auto_delete=False)


def _text(value: Any, escaped: list[bool]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | bytes):
        value = repr(value)
    text, changed = escape(value)
    if changed:
        escaped[0] = True
    return text


def record(
    reason: str,
    detail: str,
    *,
    body: bytes | str | None,
    event_id: Any = None,
    task_id: Any = None,
    content_type: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dead letter of one message: the original task body, reason, detail, event_id;
    writable whatever the input (see the module's docstring)."""
    escaped = [False]
    out: dict[str, Any] = {
        "reason": reason,
        "detail": _text(detail[:2000], escaped),
        "event_id": _text(event_id, escaped),
        "task_id": _text(task_id, escaped),
        "content_type": _text(content_type, escaped),
        "dead_lettered_at": datetime.now(UTC).isoformat(),
    }
    if body is not None:
        size = len(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
        if size > MAX_KEPT_BODY_BYTES:
            out["body_bytes"] = size
            out["body_truncated"] = True
            body = body[:MAX_KEPT_BODY_BYTES]
        if isinstance(body, bytes):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                out["body_b64"] = base64.b64encode(body).decode("ascii")
    out["body"] = _text(body, escaped)
    for name, value in (extra or {}).items():
        out[name] = _text(value, escaped) if isinstance(value, str | bytes) else value
    if escaped[0]:
        out["escaped"] = True
    return out


def encode(letter: Mapping[str, Any]) -> bytes:
    """A letter's bytes. `record` made every text writable; ASCII-escaped JSON is the last
    guard for a letter built elsewhere."""
    try:
        return json.dumps(letter, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(letter, ensure_ascii=True).encode("ascii")


def amqp_message(letter: Mapping[str, Any]) -> amqp.Message:
    """A dead letter as a persistent py-amqp message (for publishers without kombu)."""
    return amqp.Message(
        encode(letter), content_type="application/json", content_encoding="utf-8", delivery_mode=2
    )


def publish(producer: Producer, settings: RabbitSettings, letter: Mapping[str, Any]) -> None:
    """Publish a dead letter (persistent; the caller's connection confirms publishes)."""
    producer.publish(
        encode(letter),
        exchange="",
        routing_key=settings.dead_letter_queue,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        declare=[dead_letter_queue(settings)],
        retry=True,
        retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
        timeout=PUBLISH_TIMEOUT_S,
        confirm_timeout=PUBLISH_TIMEOUT_S,
    )


def read(settings: RabbitSettings, limit: int = 1000, ack: bool = False) -> list[dict[str, Any]]:
    """Up to `limit` dead letters, oldest first; left in the queue unless `ack`."""
    letters: list[dict[str, Any]] = []
    with connection(settings) as conn:
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
