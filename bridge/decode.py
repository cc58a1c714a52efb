"""AMQP message -> Kafka record, or the reason it is dead-lettered (pure, no I/O).

The bridge forwards the *raw event text* unchanged: the single argument of a Celery
protocol-2 task message of the aggregation task, or the whole body of a plain JSON
message (content type application/json and no Celery `task` header). It does not apply
the counting contract (Abacus does, with the contract's reasons); it only extracts the
Kafka key (`company_id`, when the event is a JSON object with a string `company_id`) and
refuses what it cannot forward faithfully. Pickle is recognised by its content type and
never deserialised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from counting.events import MAX_INPUT_BYTES
from legacy.protocol import TASK_NAME

MAX_EVENT_BYTES = MAX_INPUT_BYTES  # 1 MiB: the contract's `too_large`, checked on raw bytes
MAX_BODY_BYTES = 4 * 1024 * 1024  # larger bodies are dead-lettered truncated to this
PICKLE_CONTENT_TYPE = "application/x-python-serialize"
_JSON_CONTENT_TYPES = frozenset({"application/json", "application/x-json", "text/json"})
_UTF8_NAMES = frozenset({"utf-8", "utf8"})


class Reason(StrEnum):
    """Why the bridge dead-letters a message (the `reason` header of a DLQ record)."""

    OVERSIZED_BODY = "oversized_body"  # body > 4 MiB (DLQ record holds the first 4 MiB)
    PICKLE = "pickle"  # application/x-python-serialize: never deserialised
    CONTENT_TYPE = "content_type"  # missing or not JSON
    BAD_ENCODING = "bad_encoding"  # content encoding not UTF-8, or a compressed body
    UNKNOWN_TASK = "unknown_task"  # a Celery task that is not the aggregation task
    BROKEN_JSON = "broken_json"  # the body is not UTF-8 JSON
    BAD_ENVELOPE = "bad_envelope"  # not a protocol-2 [args, kwargs, embed] with one text arg
    TOO_LARGE = "too_large"  # the raw event is larger than 1 MiB (contract's name)
    KAFKA_REJECTED = "kafka_rejected"  # Kafka refused the record permanently (e.g. size)


class Message(Protocol):
    """What the bridge needs of one AMQP delivery (`bridge.amqp091.Delivery` is one)."""

    @property
    def body(self) -> bytes: ...
    @property
    def properties(self) -> Mapping[str, Any]: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def exchange(self) -> str: ...
    @property
    def redelivered(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Incoming:
    """A `Message` built by hand (tests, tools)."""

    body: bytes
    properties: Mapping[str, Any]
    routing_key: str = ""
    exchange: str = ""
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Good:
    """Forward `value` (the raw event bytes) to the events topic."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Bad:
    """Dead-letter `value` (the original body, maybe truncated) with `reason`."""

    reason: Reason
    detail: str
    value: bytes
    headers: list[tuple[str, bytes]]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def record_headers(msg: Message, received_ms: int, task_id: str | None) -> list[tuple[str, bytes]]:
    """The Kafka headers of every record (good or dead-lettered) of one message."""
    props = msg.properties
    out: list[tuple[str, bytes]] = []
    message_id = props.get("message_id")
    if message_id:
        out.append(("message_id", str(message_id).encode()))
    if task_id:
        out.append(("task_id", task_id.encode("utf-8", "replace")))
    out.append(("content_type", str(props.get("content_type") or "").encode()))
    out.append(("routing_key", msg.routing_key.encode()))
    out.append(("exchange", msg.exchange.encode()))
    out.append(("redelivered", b"true" if msg.redelivered else b"false"))
    timestamp = props.get("timestamp")
    if timestamp is not None:
        out.append(("published_at", str(int(timestamp)).encode()))
    out.append(("bridge_received_ms", str(received_ms).encode()))
    return out


def key_of(raw: str | bytes) -> bytes:
    """The Kafka key: the event's `company_id` if it is a JSON object with a string one."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return b""
    if isinstance(obj, dict):
        company = obj.get("company_id")
        if isinstance(company, str):
            return company.encode("utf-8", "surrogatepass")
    return b""


def _bad(
    reason: Reason,
    detail: str,
    msg: Message,
    received_ms: int,
    task_id: str | None,
    extra: list[tuple[str, bytes]] | None = None,
) -> Bad:
    headers = record_headers(msg, received_ms, task_id)
    headers.append(("reason", reason.value.encode()))
    headers.append(("detail", detail.encode("utf-8", "replace")))
    body = msg.body
    if len(body) > MAX_BODY_BYTES:
        body = body[:MAX_BODY_BYTES]
    headers.append(("original_size", str(len(msg.body)).encode()))
    if extra:
        headers.extend(extra)
    return Bad(reason, detail, body, headers)


def decode(msg: Message, received_ms: int) -> Good | Bad:
    """Decode one AMQP message into a Kafka record or a dead-letter record."""
    props = msg.properties
    headers = props.get("headers")
    if headers is None:
        headers = {}
    task = _text(headers.get("task")) if isinstance(headers, Mapping) else None
    task_id = _text(headers.get("id")) if task is not None else None
    if task_id is None:
        task_id = _text(props.get("correlation_id")) if task is not None else None
    body = msg.body

    if len(body) > MAX_BODY_BYTES:
        return _bad(
            Reason.OVERSIZED_BODY,
            f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}; first {MAX_BODY_BYTES} kept",
            msg,
            received_ms,
            task_id,
        )
    content_type = (_text(props.get("content_type")) or "").split(";")[0].strip().lower()
    if content_type == PICKLE_CONTENT_TYPE:
        return _bad(Reason.PICKLE, "pickle is never deserialised", msg, received_ms, task_id)
    if content_type not in _JSON_CONTENT_TYPES:
        shown = content_type or "(none)"
        return _bad(
            Reason.CONTENT_TYPE, f"content type {shown} is not JSON", msg, received_ms, task_id
        )
    encoding = (_text(props.get("content_encoding")) or "utf-8").strip().lower()
    if encoding not in _UTF8_NAMES:
        return _bad(
            Reason.BAD_ENCODING,
            f"content encoding {encoding} is not UTF-8",
            msg,
            received_ms,
            task_id,
        )
    if isinstance(headers, Mapping) and headers.get("compression"):
        return _bad(
            Reason.BAD_ENCODING, "compressed bodies are not accepted", msg, received_ms, task_id
        )
    if task is not None and task != TASK_NAME:
        return _bad(
            Reason.UNKNOWN_TASK,
            f"task {task[:200]} is not {TASK_NAME}",
            msg,
            received_ms,
            task_id,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _bad(Reason.BROKEN_JSON, f"body is not UTF-8: {exc}", msg, received_ms, task_id)

    if task is None:  # a plain JSON event: the body is the raw event
        if len(body) > MAX_EVENT_BYTES:
            return _bad(
                Reason.TOO_LARGE,
                f"event of {len(body)} bytes exceeds {MAX_EVENT_BYTES}",
                msg,
                received_ms,
                task_id,
            )
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return _bad(Reason.BROKEN_JSON, f"body is not JSON: {exc}", msg, received_ms, None)
        if isinstance(obj, dict) and "task" in obj and "args" in obj and "id" in obj:
            return _bad(
                Reason.BAD_ENVELOPE,
                "Celery protocol 1 messages are not accepted (use protocol 2)",
                msg,
                received_ms,
                _text(obj.get("id")),
            )
        key = b""
        if isinstance(obj, dict):
            company = obj.get("company_id")
            if isinstance(company, str):
                key = company.encode("utf-8", "surrogatepass")
        return Good(key, body, record_headers(msg, received_ms, None))

    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _bad(Reason.BROKEN_JSON, f"body is not JSON: {exc}", msg, received_ms, task_id)
    if not (
        isinstance(envelope, list)
        and len(envelope) == 3
        and isinstance(envelope[0], list)
        and isinstance(envelope[1], dict)
    ):
        return _bad(
            Reason.BAD_ENVELOPE,
            "body is not a Celery protocol-2 [args, kwargs, embed] list",
            msg,
            received_ms,
            task_id,
        )
    args, kwargs = envelope[0], envelope[1]
    if len(args) != 1 or kwargs or not isinstance(args[0], str):
        return _bad(
            Reason.BAD_ENVELOPE,
            f"{TASK_NAME} takes exactly one argument, the raw event text",
            msg,
            received_ms,
            task_id,
        )
    raw = args[0]
    try:
        value = raw.encode("utf-8")
    except UnicodeEncodeError:
        return _bad(
            Reason.BAD_ENVELOPE,
            "the event text is not valid Unicode (lone surrogate)",
            msg,
            received_ms,
            task_id,
        )
    if len(value) > MAX_EVENT_BYTES:
        return _bad(
            Reason.TOO_LARGE,
            f"event of {len(value)} bytes exceeds {MAX_EVENT_BYTES}",
            msg,
            received_ms,
            task_id,
        )
    return Good(key_of(raw), value, record_headers(msg, received_ms, task_id))


def task_id_of(msg: Message) -> str | None:
    """The Celery task id of a task message (header `id`), else None."""
    headers = msg.properties.get("headers")
    if not isinstance(headers, Mapping) or headers.get("task") is None:
        return None
    return _text(headers.get("id")) or _text(msg.properties.get("correlation_id"))


def dead_letter(msg: Message, received_ms: int, reason: Reason, detail: str) -> Bad:
    """Dead-letter a message for a reason found after decoding (e.g. Kafka refused it)."""
    return _bad(reason, detail, msg, received_ms, task_id_of(msg))
