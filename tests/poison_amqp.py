"""AMQP-level poison: messages a hostile or broken publisher can put on the wire.

Each message is encoded here byte by byte (stdlib only, no AMQP client), because the
poison lives where clients refuse to go: invalid UTF-8 in short-string properties and in
header names and values, header tables nested thousands of levels deep, header values of
unexpected types, bodies that are not JSON or hide giant integers and deep nesting.

`messages()` returns them with what the bridge does with each: `forward` (a decodable
aggregation task: its event text goes to the events topic, unchanged) or the reason of
its dead letter. Other consumers (the legacy worker) may use the same messages with their
own expectations. `frames()` builds the frames of one publish, for any raw-socket client;
`bridge.amqp091.Connection.publish_frames(..., encoded_properties=m.properties)` too.

Not here, because RabbitMQ itself refuses them at publish (it closes the publisher's
channel or connection; measured on RabbitMQ 3.10): a `delivery_mode` other than 1 or 2
("406 PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,255}"), a float header
of NaN or infinity ("541 INTERNAL_ERROR": the broker's own decoder fails), a `user_id`
other than the publisher's login, an `expiration` that is not a number, truncated frames
or tables. The client's decoder meets those only from a broken server; the fuzz tests in
tests/unit feed them to it directly.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

TASK_NAME = "legacy.aggregate"
FORWARD = "forward"

# Basic content-header property flags, in wire order
# Celery task headers a real Celery worker would drop a task on silently (an ETA it cannot
# read, an expiry in the past) or fail on outside the task (a time limit that is not two
# numbers), each with a valid task otherwise: legacy dead-letters them as bad_task_message.
HOSTILE_HEADERS: list[tuple[str, object]] = [
    ("eta", "2020-01-01T00:00:00"),
    ("eta", "not a date"),
    ("expires", "2000-01-01T00:00:00"),
    ("timelimit", "abc"),
    ("timelimit", [1]),
    ("timelimit", [True, None]),
    ("id", 5),
    ("id", ""),
    ("retries", "x"),
    ("root_id", 3),
    ("argsrepr", ["x"]),
]


_FLAGS = {
    "content_type": 0x8000,
    "content_encoding": 0x4000,
    "headers": 0x2000,
    "delivery_mode": 0x1000,
    "priority": 0x0800,
    "correlation_id": 0x0400,
    "reply_to": 0x0200,
    "expiration": 0x0100,
    "message_id": 0x0080,
    "timestamp": 0x0040,
    "type": 0x0020,
    "user_id": 0x0010,
    "app_id": 0x0008,
    "cluster_id": 0x0004,
}


class Raw(bytes):
    """A field value already encoded (its type octet and payload), sent as is."""


def _short(value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    assert len(raw) <= 255, "AMQP short strings hold at most 255 bytes"
    return bytes((len(raw),)) + raw


def _long(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def value(v: Any) -> bytes:
    """One field value: str and bytes as long strings ('S', bytes sent unchecked)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + bytes((int(v),))
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, str):
        return b"S" + _long(v.encode("utf-8", "surrogatepass"))
    if isinstance(v, bytes):
        return b"S" + _long(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    if isinstance(v, list):
        return b"A" + _long(b"".join(value(x) for x in v))
    raise TypeError(type(v).__name__)


def table(entries: dict[str | bytes, Any] | list[tuple[str | bytes, Any]]) -> bytes:
    """A field table; keys may be bytes (sent unchecked), entries a list (order kept)."""
    items = entries.items() if isinstance(entries, dict) else entries
    return _long(b"".join(_short(k) + value(v) for k, v in items))


def nested_table(depth: int) -> Raw:
    """A table value nested `depth` levels deep: {"d": {"d": ... {} }} (iteratively built)."""
    inner = b"F" + _long(b"")
    for _ in range(depth - 1):
        inner = b"F" + _long(_short("d") + inner)
    return Raw(inner)


def nested_array(depth: int) -> Raw:
    inner = b"A" + _long(b"")
    for _ in range(depth - 1):
        inner = b"A" + _long(inner)
    return Raw(inner)


def properties(props: dict[str, Any]) -> tuple[int, bytes]:
    """(flags, property list): short strings as str or raw bytes, `headers` a dict, a list
    of entries or already-encoded bytes (`Raw`), octets and the timestamp as ints."""
    flags = 0
    parts: list[bytes] = []
    for name, flag in _FLAGS.items():
        if name not in props:
            continue
        v = props[name]
        flags |= flag
        if name == "headers":
            parts.append(bytes(v) if isinstance(v, Raw) else table(v))
        elif name in ("delivery_mode", "priority"):
            parts.append(bytes((v,)))
        elif name == "timestamp":
            parts.append(struct.pack(">Q", v))
        else:
            parts.append(_short(v))
    return flags, b"".join(parts)


def frames(
    body: bytes,
    props: tuple[int, bytes],
    exchange: str,
    routing_key: str,
    frame_max: int = 131072,
    channel: int = 1,
) -> bytes:
    """The method, content-header and body frames of one Basic.Publish."""

    def frame(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"

    method = struct.pack(">HHH", 60, 40, 0) + _short(exchange) + _short(routing_key) + b"\x00"
    flags, plist = props
    out = [frame(1, method), frame(2, struct.pack(">HHQH", 60, 0, len(body), flags) + plist)]
    step = frame_max - 8
    out += [frame(3, body[i : i + step]) for i in range(0, len(body), step)]
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class PoisonMessage:
    name: str
    body: bytes
    properties: tuple[int, bytes]  # (flags, property list), as `properties()` encodes them
    expect: str  # FORWARD, or the bridge's dead-letter reason
    event: bytes = b""  # the event text forwarded (FORWARD only)
    escaped: bool = False  # the bridge's record carries `escaped: 1`


def _event(n: int) -> str:
    return json.dumps(
        {
            "event_id": f"amqp-poison-{n}",
            "company_id": "COM-AP",
            "customer_id": f"CUS{n}",
            "statistic_id": "poisoned",
            "timestamp": 1700000000 + n,
        }
    )


def celery_body(raw_event: str | bytes, embed: str = "{}") -> bytes:
    """A Celery protocol-2 body ([args, kwargs, embed]) whose one argument is the event text;
    bytes that are not UTF-8 travel as the escapes of lone surrogates (`\\udcff`), the
    only way JSON can carry them."""
    if isinstance(raw_event, bytes):
        raw_event = raw_event.decode("utf-8", "surrogateescape")
    return f"[[{json.dumps(raw_event)}], {{}}, {embed}]".encode()


def celery_properties(task_id: str) -> tuple[int, bytes]:
    """The properties and headers of a well-formed aggregation task message."""
    return properties(
        {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "headers": _headers(task_id),
            "delivery_mode": 2,
            "correlation_id": task_id,
        }
    )


def _headers(task_id: str, **changes: Any) -> list[tuple[str | bytes, Any]]:
    base: dict[str | bytes, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "argsrepr": "(<event>,)",
        "origin": "poison",
    }
    for k, v in changes.items():
        if v is _DROP:
            base.pop(k, None)
        else:
            base[k] = v
    return list(base.items())


_DROP = object()


def messages() -> list[PoisonMessage]:
    """The AMQP poison, each body distinct (a dead letter is found by its body)."""
    out: list[PoisonMessage] = []

    def task(
        name: str,
        expect: str,
        *,
        body: bytes | None = None,
        headers: Any = None,
        escaped: bool = False,
        **props: Any,
    ) -> None:
        n = len(out)
        raw = _event(n)
        tid = f"T-amqp-poison-{n}"
        p: dict[str, Any] = {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "headers": headers if headers is not None else _headers(tid),
            "delivery_mode": 2,
            "correlation_id": tid,
        }
        for k, v in props.items():
            if v is _DROP:
                p.pop(k, None)
            else:
                p[k] = v
        body = celery_body(raw) if body is None else body
        event = raw.encode() if expect == FORWARD else b""
        out.append(PoisonMessage(name, body, properties(p), expect, event, escaped))

    def tid() -> str:
        return f"T-amqp-poison-{len(out)}"

    # ---- AMQP properties (short strings: any bytes), forwarded with escaped headers
    task("message_id of invalid UTF-8", FORWARD, message_id=b"M-\xff\xfe", escaped=True)
    task(
        "message_id of a UTF-8-encoded surrogate", FORWARD, message_id=b"\xed\xa0\x80", escaped=True
    )
    task(
        "message_id with NUL, bidi and markup",
        FORWARD,
        message_id="a\x00\u202e[/bold][link=https://x]=1+2",
    )
    task("message_id of 255 four-byte-ish bytes", FORWARD, message_id=b"\xf0\x9f\x92\xa9" * 63)
    task(
        "correlation_id, reply_to, type, app_id, cluster_id of invalid UTF-8",
        FORWARD,
        correlation_id=b"\xc3\x28",
        reply_to=b"\xff",
        type=b"\x80",
        app_id=b"\xfe",
        cluster_id=b"\xa0\xa1",
    )
    task("priority out of range, transient", FORWARD, priority=255, delivery_mode=1)
    task("timestamp of 2**64 - 1", FORWARD, timestamp=2**64 - 1)
    task("every property empty", FORWARD, message_id="", reply_to="", type="", app_id="")
    # ---- content type and encoding
    task(
        "content_type of invalid UTF-8",
        "content_type",
        content_type=b"application/json\xff",
        escaped=True,
    )
    task("content_type with a NUL", "content_type", content_type=b"application/json\x00")
    task("content_type of markup", "content_type", content_type="[bold]text/x[/bold]")
    task(
        "content_encoding of invalid UTF-8",
        "bad_encoding",
        content_encoding=b"utf\xff8",
        escaped=True,
    )
    task("no content_type", "content_type", content_type=_DROP)
    # ---- header names and values
    task(
        "task id header of invalid UTF-8",
        FORWARD,
        headers=_headers(tid(), id=b"T-\xff"),
        escaped=True,
    )
    task(
        "task id header of a lone surrogate (UTF-8-encoded)",
        FORWARD,
        headers=_headers(tid(), id=b"\xed\xb2\x80"),
        escaped=True,
    )
    task(
        "a header name of invalid UTF-8",
        FORWARD,
        headers=[*_headers(tid()), (b"\xff\xfe", 1), (b"\x00", b"\x00")],
    )
    task(
        "no task id header, correlation_id of invalid UTF-8",
        FORWARD,
        headers=_headers(tid(), id=_DROP, root_id=_DROP),
        correlation_id=b"C-\xff",
        escaped=True,
    )
    task(
        "header values of every type",
        FORWARD,
        headers=[
            *_headers(tid(), retries="three", timelimit={"soft": [1.5, None]}),
            ("decimal", Raw(b"D\x02" + struct.pack(">i", -12345))),
            ("ts", Raw(b"T" + struct.pack(">Q", 2**64 - 1))),  # past year 9999
            ("bytes", Raw(b"x" + _long(b"\x00\xff"))),
            ("f32", Raw(b"f" + struct.pack(">f", -1.5))),
            ("u8", Raw(b"B\xff")),
            ("i16", Raw(b"s\x80\x00")),
            ("u32", Raw(b"i\xff\xff\xff\xff")),
            ("u64", Raw(b"L" + b"\xff" * 8)),
            ("u16", Raw(b"u\xff\xff")),
            ("i8", Raw(b"b\x80")),
        ],
    )
    task(
        "the task header as bytes of invalid UTF-8",
        "unknown_task",
        headers=_headers(tid(), task=b"legacy.aggregate\xff"),
        escaped=True,
    )
    task("the task header as an integer", "unknown_task", headers=_headers(tid(), task=7))
    task(
        "the task header as a table",
        "unknown_task",
        headers=_headers(tid(), task={"task": TASK_NAME}),
    )
    task(
        "the task header as an array nested 3,000 deep",
        "bad_headers",
        headers=_headers(tid(), task=nested_array(3000)),
    )
    task(
        "a header table nested 3,000 levels before the task header",
        "bad_headers",
        headers=[("x-deep", nested_table(3000)), *_headers(tid())],
    )
    task(
        "a header array nested 3,000 levels before the task header",
        "bad_headers",
        headers=[("x-deep", nested_array(3000)), *_headers(tid())],
    )
    task(
        "a header table nested 3,000 levels after the headers the bridge reads",
        FORWARD,
        headers=[*_headers(tid()), ("x-deep", nested_table(3000))],
    )
    task(
        "a header nested 60 levels (decoded)",
        FORWARD,
        headers=[("x-nested", nested_table(60)), *_headers(tid())],
    )
    task("2,000 headers", FORWARD, headers=[*_headers(tid()), *((f"h{i}", i) for i in range(2000))])
    task("a task id of 60 KB", FORWARD, headers=_headers(tid(), id="i" * 60_000))
    task("a compressed body", "bad_encoding", headers=_headers(tid(), compression=b"\xff"))
    # ---- bodies
    n = len(out)
    task("a body of invalid UTF-8", "broken_json", body=celery_body(_event(n))[:-3] + b"\xff]]")
    task("a body with NULs", "broken_json", body=b"\x00" * 64 + str(len(out)).encode())
    task("an empty body", "broken_json", body=b"")
    task("a truncated envelope", "broken_json", body=celery_body(_event(len(out)))[:-9])
    task(
        "a pickle",
        "pickle",
        content_type="application/x-python-serialize",
        body=b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94." + str(len(out)).encode(),
    )
    task(
        "an envelope nested 100,000 levels",
        "broken_json",
        body=b"[" * 100_000 + b"]" * 100_000 + str(len(out)).encode(),
    )
    task(
        "a 4,000,000-digit integer in the envelope's embed",
        FORWARD,
        body=celery_body(_event(len(out)), '{"n": ' + "7" * 4_000_000 + "}"),
    )
    task(
        "a lone surrogate in the event text",
        "bad_envelope",
        body=celery_body(_event(len(out)) + "\ud800"),
    )
    task(
        "a body no 1 MiB event fits in",
        "oversized_body",
        body=b"[" + b" " * (6 * 1024 * 1024 + 64 * 1024) + str(len(out)).encode() + b"]",
    )
    task(
        "an event over 1 MiB",
        "too_large",
        body=celery_body(_event(len(out))[:-1] + ', "pad": "' + "p" * (1024 * 1024) + '"}'),
    )
    task(
        "an argument that is not text",
        "bad_envelope",
        body=f"[[{_event(len(out))}], {{}}, {{}}]".encode(),
    )
    bodies = [m.body for m in out]
    assert len(set(bodies)) == len(bodies), "each poison body must be distinct"
    return out
