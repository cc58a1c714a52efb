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

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from counting.events import MAX_INPUT_BYTES, MAX_NESTING, loads, too_deep
from counting.text import escape
from wire.task import MAX_TASK_BODY_BYTES, TASK_NAME, envelope_problem

MAX_EVENT_BYTES = MAX_INPUT_BYTES  # 1 MiB: the contract's `too_large`, checked on raw bytes
MAX_BODY_BYTES = 4 * 1024 * 1024  # a dead letter keeps at most the first 4 MiB of a body
MAX_DETAIL_CHARS = 1000
PICKLE_CONTENT_TYPE = "application/x-python-serialize"
_JSON_CONTENT_TYPES = frozenset({"application/json", "application/x-json", "text/json"})
_UTF8_NAMES = frozenset({"utf-8", "utf8"})


class Reason(StrEnum):
    """Why the bridge dead-letters a message (the `reason` header of a DLQ record)."""

    OVERSIZED_BODY = "oversized_body"  # body > MAX_TASK_BODY_BYTES: no event fits; not parsed
    PICKLE = "pickle"  # application/x-python-serialize: never deserialised
    CONTENT_TYPE = "content_type"  # missing or not JSON
    BAD_ENCODING = "bad_encoding"  # content encoding not UTF-8, or a compressed body
    BAD_HEADERS = "bad_headers"  # content header or headers table malformed (truncated,
    #                              nested deeper than the client decodes, unknown type)
    UNKNOWN_TASK = "unknown_task"  # a Celery task that is not the aggregation task
    BROKEN_JSON = "broken_json"  # the body is not UTF-8 JSON (or nests deeper than 512)
    BAD_ENVELOPE = "bad_envelope"  # not a protocol-2 [args, kwargs, embed] with one text arg
    TOO_LARGE = "too_large"  # the raw event is larger than 1 MiB (contract's name)
    KAFKA_REJECTED = "kafka_rejected"  # Kafka refused the record permanently (e.g. size)
    BRIDGE_ERROR = "bridge_error"  # an unexpected error while decoding or producing it


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
    """A header or property value as text (lone surrogates possible: escape to write it).

    Strings and bytes as they are; numbers as digits; a table, array or any other type by
    its type name only (its repr could be huge or nested past the recursion limit)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, bool | int | float):
        return str(value)
    return f"<{type(value).__name__}>"


class _Headers:
    """Kafka headers built from untrusted text: every value escaped to valid UTF-8, and an
    `escaped: 1` header added when anything had to be (`finish`)."""

    __slots__ = ("escaped", "items")

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.escaped = False

    def add(self, name: str, value: str | bytes) -> None:
        if type(value) is str and value.isascii():  # the usual case, O(1) to check
            self.items.append((name, value.encode()))
            return
        text, changed = escape(value)
        if changed:
            self.escaped = True
            if isinstance(value, str):  # invalid UTF-8 the client decoded with
                # surrogateescape: show its bytes (\xff), not the surrogates (\udcff)
                with contextlib.suppress(UnicodeEncodeError):
                    text, _ = escape(value.encode("utf-8", "surrogateescape"))
        self.items.append((name, text.encode("utf-8")))

    def finish(self) -> list[tuple[str, bytes]]:
        if self.escaped:
            self.items.append(("escaped", b"1"))
        return self.items


def _published_at(timestamp: Any) -> str | None:
    if isinstance(timestamp, bool):
        return None
    if isinstance(timestamp, int):
        return str(timestamp)
    if isinstance(timestamp, datetime):  # py-amqp and kombu hand it over as a datetime
        return str(int(timestamp.timestamp()))
    return None


def _headers(msg: Message, received_ms: int, task_id: str | None) -> _Headers:
    props = msg.properties
    out = _Headers()
    message_id = _text(props.get("message_id"))
    if message_id:
        out.add("message_id", message_id)
    if task_id:
        out.add("task_id", task_id)
    out.add("content_type", _text(props.get("content_type")) or "")
    out.add("routing_key", msg.routing_key)
    out.add("exchange", msg.exchange)
    out.items.append(("redelivered", b"true" if msg.redelivered else b"false"))
    published_at = _published_at(props.get("timestamp"))
    if published_at is not None:
        out.items.append(("published_at", published_at.encode()))
    out.items.append(("bridge_received_ms", str(received_ms).encode()))
    return out


def record_headers(msg: Message, received_ms: int, task_id: str | None) -> list[tuple[str, bytes]]:
    """The Kafka headers of every record (good or dead-lettered) of one message.

    Writable for any input: values a publisher chose (ids, content type, routing key) are
    escaped where they are not valid UTF-8, and then the header `escaped: 1` is added."""
    return _headers(msg, received_ms, task_id).finish()


def _parse(text: str, data: bytes) -> Any:
    """JSON of a size the caller has bounded: nesting checked before parsing, integers of
    any length in linear time (`counting.events.loads`). ValueError if not JSON."""
    if len(data) > MAX_NESTING and too_deep(data):
        raise ValueError(f"arrays/objects nested deeper than {MAX_NESTING} levels")
    try:
        return loads(text)
    except RecursionError:  # not reachable after too_deep, unless the stack is already deep
        raise ValueError("nested too deeply to parse") from None


def key_of(raw: str | bytes) -> bytes:
    """The Kafka key: the event's `company_id` if it is a JSON object with a string one."""
    try:
        if isinstance(raw, str):
            obj = _parse(raw, raw.encode("utf-8", "surrogatepass"))
        else:
            obj = _parse(raw.decode("utf-8"), raw)
    except ValueError:  # UnicodeDecodeError included
        return b""
    return _company_key(obj)


def _company_key(obj: Any) -> bytes:
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
    extra: list[tuple[str, str]] | None = None,
) -> Bad:
    detail, escaped = escape(detail[:MAX_DETAIL_CHARS])  # it may quote the publisher's text
    headers = _headers(msg, received_ms, task_id)
    headers.escaped |= escaped
    headers.items.append(("reason", reason.value.encode()))
    headers.items.append(("detail", detail.encode("utf-8")))
    body = msg.body
    if len(body) > MAX_BODY_BYTES:
        body = body[:MAX_BODY_BYTES]
    headers.items.append(("original_size", str(len(msg.body)).encode()))
    for name, value in extra or ():
        headers.add(name, value)
    return Bad(reason, detail, body, headers.finish())


def _task_header(msg: Message) -> tuple[str | None, str | None, bool, str]:
    """(task, task id, compressed, error) from the headers table; error names a malformed
    content header or table (the client delivers such a message with `error` set)."""
    error = getattr(msg, "error", "")
    if error:
        return None, None, False, str(error)
    props = msg.properties
    headers = props.get("headers")
    if not isinstance(headers, Mapping):
        return None, None, False, ""
    try:
        task = _text(headers.get("task"))
        task_id = _text(headers.get("id")) if task is not None else None
        compressed = bool(headers.get("compression"))
    except ValueError as exc:  # bridge.amqp091.TableError: truncated, too deep, bad type
        return None, None, False, f"headers table: {exc}"
    if task is not None and task_id is None:
        task_id = _text(props.get("correlation_id"))
    return task, task_id, compressed, ""


def decode(msg: Message, received_ms: int) -> Good | Bad:
    """Decode one AMQP message into a Kafka record or a dead-letter record.

    Total for any message: every input gives a Good or a Bad; the costs are bounded before
    anything is parsed (body size, JSON nesting, header-table depth in the client)."""
    task, task_id, compressed, header_error = _task_header(msg)
    if header_error:
        return _bad(Reason.BAD_HEADERS, header_error, msg, received_ms, None)
    props = msg.properties
    body = msg.body

    if len(body) > MAX_TASK_BODY_BYTES:
        return _bad(
            Reason.OVERSIZED_BODY,
            f"body of {len(body)} bytes cannot hold an event of <= {MAX_EVENT_BYTES} bytes "
            f"(limit {MAX_TASK_BODY_BYTES}); not parsed, first {MAX_BODY_BYTES} kept",
            msg,
            received_ms,
            task_id,
        )
    content_type = (_text(props.get("content_type")) or "").split(";")[0].strip().lower()
    if content_type == PICKLE_CONTENT_TYPE:
        return _bad(Reason.PICKLE, "pickle is never deserialised", msg, received_ms, task_id)
    if content_type not in _JSON_CONTENT_TYPES:
        shown = content_type[:200] or "(none)"
        return _bad(
            Reason.CONTENT_TYPE, f"content type {shown} is not JSON", msg, received_ms, task_id
        )
    encoding = (_text(props.get("content_encoding")) or "utf-8").strip().lower()
    if encoding not in _UTF8_NAMES:
        return _bad(
            Reason.BAD_ENCODING,
            f"content encoding {encoding[:200]} is not UTF-8",
            msg,
            received_ms,
            task_id,
        )
    if compressed:
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
    if task is None and len(body) > MAX_EVENT_BYTES:  # a plain JSON event: the body is it
        return _bad(
            Reason.TOO_LARGE,
            f"event of {len(body)} bytes exceeds {MAX_EVENT_BYTES}",
            msg,
            received_ms,
            task_id,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _bad(Reason.BROKEN_JSON, f"body is not UTF-8: {exc}", msg, received_ms, task_id)
    try:
        parsed = _parse(text, body)
    except ValueError as exc:
        return _bad(Reason.BROKEN_JSON, f"body is not JSON: {exc}", msg, received_ms, task_id)

    if task is None:  # a plain JSON event: forwarded as is
        if isinstance(parsed, dict) and "task" in parsed and "args" in parsed and "id" in parsed:
            return _bad(
                Reason.BAD_ENVELOPE,
                "Celery protocol 1 messages are not accepted (use protocol 2)",
                msg,
                received_ms,
                _text(parsed.get("id")),
            )
        return Good(_company_key(parsed), body, record_headers(msg, received_ms, None))

    if problem := envelope_problem(parsed):
        return _bad(Reason.BAD_ENVELOPE, problem, msg, received_ms, task_id)
    raw: str = parsed[0][0]
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
    return Good(key_of(value), value, record_headers(msg, received_ms, task_id))


def task_id_of(msg: Message) -> str | None:
    """The Celery task id of a task message (header `id`), else None."""
    task, task_id, _, _ = _task_header(msg)
    return task_id if task is not None else None


def dead_letter(msg: Message, received_ms: int, reason: Reason, detail: str) -> Bad:
    """Dead-letter a message for a reason found after decoding (e.g. Kafka refused it)."""
    return _bad(reason, detail, msg, received_ms, task_id_of(msg))


def last_resort(msg: Message, received_ms: int, detail: str) -> Bad:
    """A dead letter built from nothing but the body and constants, for when building the
    usual one failed (`bridge_error`): it cannot raise, whatever the message holds."""
    text, _ = escape(detail[:MAX_DETAIL_CHARS])
    body = msg.body if isinstance(msg.body, bytes) else b""
    headers = [
        ("reason", Reason.BRIDGE_ERROR.value.encode()),
        ("detail", text.encode("utf-8")),
        ("original_size", str(len(body)).encode()),
        ("bridge_received_ms", str(received_ms).encode()),
    ]
    return Bad(Reason.BRIDGE_ERROR, text, body[:MAX_BODY_BYTES], headers)
