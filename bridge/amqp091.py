"""A small AMQP 0-9-1 client: one channel, consume, ack, declare, publish (no threads).

Why not py-amqp: on this 2-core machine it consumes Celery task messages at ~11k msg/s
at best, because it reads each frame with two exact-size `recv` calls and decodes every
header table through a generic, allocation-heavy path. The bridge has to consume, decode
and produce to Kafka at >= 10k msg/s, so the hot path (buffered frame parsing, a direct
field-table decoder, batched acks) lives here. The method signatures follow py-amqp's
(`exchange_declare(exchange, type, durable=...)`, `queue_declare(queue, ...)`,
`queue_bind(queue, exchange, routing_key)`), so `wire.topology.declare_topology` accepts
either client's channel.

Only what the bridge, its tests and its benchmark need is implemented: PLAIN auth, TLS,
heartbeats, exchange/queue declare/bind/delete/purge, qos, consume/cancel, ack, publish
(optionally with publisher confirms). Server-side errors raise `ChannelError` or
`ConnectionError_` with the reply code and text; the caller reconnects.

A publisher's bytes never raise inside frame handling (py-amqp raises UnicodeDecodeError on
an invalid-UTF-8 property and RecursionError on a deeply nested header table there, before
the application can dead-letter the message): short strings are decoded with
surrogateescape, a content header that cannot be decoded is delivered with
`Delivery.error`, and field tables are decoded on demand, at most MAX_TABLE_DEPTH levels
deep, raising TableError to the reader. The measurements behind keeping this client are in
bridge/README.md; tests/unit/test_bridge_amqp091.py fuzzes it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl as ssl_module
import struct
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"

# (class_id, method_id)
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CONNECTION_BLOCKED = (10, 60)
CONNECTION_UNBLOCKED = (10, 61)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
EXCHANGE_DECLARE = (40, 10)
EXCHANGE_DECLARE_OK = (40, 11)
EXCHANGE_DELETE = (40, 20)
EXCHANGE_DELETE_OK = (40, 21)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
QUEUE_BIND = (50, 20)
QUEUE_BIND_OK = (50, 21)
QUEUE_PURGE = (50, 30)
QUEUE_PURGE_OK = (50, 31)
QUEUE_DELETE = (50, 40)
QUEUE_DELETE_OK = (50, 41)
BASIC_QOS = (60, 10)
BASIC_QOS_OK = (60, 11)
BASIC_CONSUME = (60, 20)
BASIC_CONSUME_OK = (60, 21)
BASIC_CANCEL = (60, 30)
BASIC_CANCEL_OK = (60, 31)
BASIC_PUBLISH = (60, 40)
BASIC_RETURN = (60, 50)
BASIC_DELIVER = (60, 60)
BASIC_ACK = (60, 80)
BASIC_NACK = (60, 120)
CONFIRM_SELECT = (85, 10)
CONFIRM_SELECT_OK = (85, 11)

_METHOD_HEAD = struct.Struct(">BHIHH")  # frame type, channel, size, class, method
_FRAME_HEAD = struct.Struct(">BHI")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_HEADER_HEAD = struct.Struct(">HHQH")  # class, weight, body size, property flags

_RECV_BYTES = 256 * 1024

PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


class AmqpError(Exception):
    """A server-side error (channel or connection closed) or a protocol violation."""

    def __init__(self, message: str, reply_code: int = 0) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class ChannelError(AmqpError):
    """The server closed the channel (e.g. 406 PRECONDITION_FAILED, 404 NOT_FOUND)."""


class ConnectionError_(AmqpError):
    """The server closed the connection, or it was lost."""


@dataclass(slots=True)
class Delivery:
    """One message delivered to a consumer (Basic.Deliver + header + body)."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    consumer_tag: str
    properties: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    # why the content header's properties could not be decoded ("" when they could); the
    # message is delivered all the same, with the properties it has, to be dead-lettered
    error: str = ""


# ---------------------------------------------------------------- field-table codec

# Tables and arrays nested deeper than this are refused (TableError), never decoded by
# recursion: a publisher can nest a header table thousands of levels deep in one frame.
MAX_TABLE_DEPTH = 64


class TableError(ValueError):
    """A field table or property list that cannot be decoded: truncated, overrunning its
    declared length, of an unknown field type, or nested deeper than MAX_TABLE_DEPTH.

    Raised to the code that reads the message, never inside frame handling: the message
    is still delivered (and dead-lettered by the bridge), the connection lives on."""


def _shortstr(buf: bytes | bytearray, pos: int) -> tuple[str, int]:
    n = buf[pos]
    pos += 1
    end = pos + n
    if end > len(buf):
        raise TableError(f"short string of {n} bytes runs past the end of its frame")
    return bytes(buf[pos:end]).decode("utf-8", "surrogateescape"), end


def _longstr_bytes(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise TableError(f"long string of {n} bytes runs past the end of its table")
    return bytes(buf[pos : pos + n]), pos + n


def _value(buf: bytes | bytearray, pos: int, depth: int = 0) -> tuple[Any, int]:
    kind = buf[pos]
    pos += 1
    if kind == 0x53:  # 'S' long string
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        if pos + n > len(buf):
            raise TableError(f"long string of {n} bytes runs past the end of its table")
        raw = bytes(buf[pos : pos + n])
        try:
            return raw.decode("utf-8"), pos + n
        except UnicodeDecodeError:
            return raw, pos + n
    if kind == 0x56:  # 'V' void
        return None, pos
    if kind == 0x74:  # 't' bool
        return bool(buf[pos]), pos + 1
    if kind == 0x49:  # 'I' signed 32
        return _I32.unpack_from(buf, pos)[0], pos + 4
    if kind == 0x6C:  # 'l' signed 64
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if kind == 0x41:  # 'A' array
        if depth >= MAX_TABLE_DEPTH:
            raise TableError(f"arrays/tables nested deeper than {MAX_TABLE_DEPTH} levels")
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        end = pos + n
        if end > len(buf):
            raise TableError(f"array of {n} bytes runs past the end of its table")
        items = []
        while pos < end:
            item, pos = _value(buf, pos, depth + 1)
            items.append(item)
        if pos != end:
            raise TableError("an array item overruns the array's declared length")
        return items, pos
    if kind == 0x46:  # 'F' table
        if depth >= MAX_TABLE_DEPTH:
            raise TableError(f"arrays/tables nested deeper than {MAX_TABLE_DEPTH} levels")
        return _table(buf, pos, depth + 1)
    if kind == 0x62:  # 'b'
        return _I8.unpack_from(buf, pos)[0], pos + 1
    if kind == 0x42:  # 'B'
        return buf[pos], pos + 1
    if kind == 0x73:  # 's' signed 16 (RabbitMQ)
        return _I16.unpack_from(buf, pos)[0], pos + 2
    if kind == 0x75:  # 'u'
        return _U16.unpack_from(buf, pos)[0], pos + 2
    if kind == 0x69:  # 'i' unsigned 32
        return _U32.unpack_from(buf, pos)[0], pos + 4
    if kind == 0x4C:  # 'L' unsigned 64
        return _U64.unpack_from(buf, pos)[0], pos + 8
    if kind == 0x66:  # 'f'
        return _F32.unpack_from(buf, pos)[0], pos + 4
    if kind == 0x64:  # 'd'
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if kind == 0x44:  # 'D' decimal
        scale = buf[pos]
        (unscaled,) = _I32.unpack_from(buf, pos + 1)
        return Decimal(unscaled).scaleb(-scale), pos + 5
    if kind == 0x54:  # 'T' timestamp
        (ts,) = _U64.unpack_from(buf, pos)
        try:
            return datetime.fromtimestamp(ts, UTC), pos + 8
        except (OverflowError, OSError, ValueError):  # beyond year 9999: keep the number
            return ts, pos + 8
    if kind == 0x78:  # 'x' byte array
        return _longstr_bytes(buf, pos)
    raise TableError(f"unknown field type {kind:#04x} in a field table")


def _table(buf: bytes | bytearray, pos: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    """Decode a field table; the common types (long string, void, bool, ints) inline.

    A truncated table raises IndexError or struct.error from here; the public entry points
    (`decode_table`, `table_get`, `LazyTable`, `decode_properties`) turn them into
    TableError, so that the hot path carries no try block per value."""
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + n
    if end > len(buf):
        raise TableError(f"field table of {n} bytes runs past the end of its frame")
    out: dict[str, Any] = {}
    u32 = _U32.unpack_from
    while pos < end:
        klen = buf[pos]
        kend = pos + 1 + klen
        key = buf[pos + 1 : kend].decode("utf-8", "surrogateescape")
        kind = buf[kend]
        if kind == 0x53:  # 'S'
            (ln,) = u32(buf, kend + 1)
            pos = kend + 5 + ln
            if pos > end:
                raise TableError(f"long string of {ln} bytes runs past the end of its table")
            raw = buf[kend + 5 : pos]
            try:
                out[key] = raw.decode("utf-8")
            except UnicodeDecodeError:
                out[key] = bytes(raw)
        elif kind == 0x56:  # 'V'
            out[key] = None
            pos = kend + 1
        elif kind == 0x74:  # 't'
            out[key] = bool(buf[kend + 1])
            pos = kend + 2
        else:
            out[key], pos = _value(buf, kend, depth)
    if pos != end:
        raise TableError("a table entry overruns the table's declared length")
    return out, pos


_MISSING = object()
_MALFORMED = (struct.error, IndexError, TableError)


def _skip_entry(buf: bytes, pos: int) -> int:
    """The position after the table entry (key and value) that starts at `pos`."""
    vpos = pos + 1 + buf[pos]
    if buf[vpos] == 0x53:  # 'S'
        return int(vpos + 5 + _U32.unpack_from(buf, vpos + 1)[0])
    return int(_value(buf, vpos)[1])


def table_get(raw: bytes, key: str, default: Any = None) -> Any:
    """One value of an encoded field table, without decoding the others.

    Finds the key's bytes, then walks entry boundaries up to that position to make sure
    the match is an entry and not bytes inside an earlier value; an absent key costs one
    `bytes.find`. A malformed table raises TableError (whatever the key).
    """
    try:
        kb = key.encode("utf-8", "surrogateescape")
        needle = bytes((len(kb),)) + kb
        end = 4 + _U32.unpack_from(raw, 0)[0]
        if end > len(raw):
            raise TableError("field table runs past the end of its frame")
        walked = 4
        search = 4
        while True:
            found = raw.find(needle, search, end)
            if found < 0:
                return default
            while walked < found:
                walked = _skip_entry(raw, walked)
            if walked == found:
                return _value(raw if len(raw) == end else raw[:end], found + len(needle))[0]
            search = found + 1
    except _MALFORMED as exc:
        raise _table_error(exc) from None


def _table_error(exc: BaseException) -> TableError:
    if isinstance(exc, TableError):
        return exc
    return TableError(f"truncated field table ({type(exc).__name__}: {exc})")


class LazyTable(Mapping[str, Any]):
    """A field table kept encoded: `get` decodes one value, iteration decodes all once.

    Every access to a malformed table raises TableError."""

    __slots__ = ("_decoded", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._decoded: dict[str, Any] | None = None

    def _all(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = decode_table(self.raw)
        return self._decoded

    def get(self, key: str, default: Any = None) -> Any:
        if self._decoded is not None:
            return self._decoded.get(key, default)
        return table_get(self.raw, key, default)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        try:
            return f"LazyTable({self._all()!r})"
        except TableError as exc:
            return f"LazyTable(<malformed: {exc}>)"


def decode_table(data: bytes | bytearray) -> dict[str, Any]:
    """Decode an AMQP field table (with its 4-byte length prefix); TableError if malformed."""
    try:
        return _table(data, 0)[0]
    except _MALFORMED as exc:
        raise _table_error(exc) from None


def _enc_value(v: Any) -> bytes:
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + (b"\x01" if v else b"\x00")
    if isinstance(v, int):
        if -(2**31) <= v < 2**31:
            return b"I" + _I32.pack(v)
        return b"l" + _I64.pack(v)
    if isinstance(v, float):
        return b"d" + _F64.pack(v)
    if isinstance(v, str):
        raw = v.encode("utf-8")
        return b"S" + _U32.pack(len(raw)) + raw
    if isinstance(v, bytes | bytearray):
        return b"x" + _U32.pack(len(v)) + bytes(v)
    if isinstance(v, dict):
        return b"F" + encode_table(v)
    if isinstance(v, list | tuple):
        inner = b"".join(_enc_value(x) for x in v)
        return b"A" + _U32.pack(len(inner)) + inner
    if isinstance(v, datetime):
        return b"T" + _U64.pack(int(v.timestamp()))
    if isinstance(v, Decimal):
        exponent = v.as_tuple().exponent
        scale = -int(exponent) if isinstance(exponent, int) and exponent < 0 else 0
        unscaled = int(v.scaleb(scale))
        return b"D" + _U8.pack(scale) + _I32.pack(unscaled)
    raise TypeError(f"cannot encode {type(v).__name__} in an AMQP field table")


def _enc_shortstr(s: str | bytes) -> bytes:
    raw = s if isinstance(s, bytes) else s.encode("utf-8")
    if len(raw) > 255:
        raise ValueError("AMQP short string longer than 255 bytes")
    return _U8.pack(len(raw)) + raw


def encode_table(table: dict[str, Any] | None) -> bytes:
    """Encode an AMQP field table (with its 4-byte length prefix)."""
    if not table:
        return b"\x00\x00\x00\x00"
    inner = b"".join(_enc_shortstr(k) + _enc_value(v) for k, v in table.items())
    return _U32.pack(len(inner)) + inner


def decode_properties(
    buf: bytes | bytearray, pos: int, flags: int, lazy_headers: bool = False
) -> dict[str, Any]:
    """Basic content-header properties, from the property list at `pos` to the end of `buf`
    (pass the frame's payload). TableError if the list is truncated or its table malformed.

    With `lazy_headers`, the headers table is a `LazyTable` (decoded on demand, so a
    malformed table raises only when the message is read, not here).
    Short strings are decoded with `surrogateescape`: invalid UTF-8 from a publisher comes
    out as lone surrogates, which the reader must escape before encoding them again.
    """
    try:
        return _properties(buf, pos, flags, lazy_headers)
    except _MALFORMED as exc:
        raise _table_error(exc) from None


def _properties(buf: bytes | bytearray, pos: int, flags: int, lazy_headers: bool) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if flags & 0x8000:
        props["content_type"], pos = _shortstr(buf, pos)
    if flags & 0x4000:
        props["content_encoding"], pos = _shortstr(buf, pos)
    if flags & 0x2000:
        if lazy_headers:
            end = pos + 4 + _U32.unpack_from(buf, pos)[0]
            if end > len(buf):
                raise TableError("the headers table runs past the end of its frame")
            props["headers"] = LazyTable(bytes(buf[pos:end]))
            pos = end
        else:
            props["headers"], pos = _table(buf, pos)
    if flags & 0x1000:
        props["delivery_mode"] = buf[pos]
        pos += 1
    if flags & 0x0800:
        props["priority"] = buf[pos]
        pos += 1
    if flags & 0x0400:
        props["correlation_id"], pos = _shortstr(buf, pos)
    if flags & 0x0200:
        props["reply_to"], pos = _shortstr(buf, pos)
    if flags & 0x0100:
        props["expiration"], pos = _shortstr(buf, pos)
    if flags & 0x0080:
        props["message_id"], pos = _shortstr(buf, pos)
    if flags & 0x0040:
        props["timestamp"] = _U64.unpack_from(buf, pos)[0]
        pos += 8
    if flags & 0x0020:
        props["type"], pos = _shortstr(buf, pos)
    if flags & 0x0010:
        props["user_id"], pos = _shortstr(buf, pos)
    if flags & 0x0008:
        props["app_id"], pos = _shortstr(buf, pos)
    if flags & 0x0004:
        props["cluster_id"], pos = _shortstr(buf, pos)
    return props


def encode_properties(props: dict[str, Any]) -> tuple[int, bytes]:
    """(flags, property list) of Basic content-header properties."""
    flags = 0
    parts: list[bytes] = []
    for i, name in enumerate(PROPERTY_NAMES):
        value = props.get(name)
        if value is None:
            continue
        flags |= 1 << (15 - i)
        if name == "headers":
            parts.append(encode_table(value))
        elif name in ("delivery_mode", "priority"):
            parts.append(_U8.pack(int(value)))
        elif name == "timestamp":
            ts = int(value.timestamp()) if isinstance(value, datetime) else int(value)
            parts.append(_U64.pack(ts))
        else:
            parts.append(_enc_shortstr(str(value)))
    return flags, b"".join(parts)


# ---------------------------------------------------------------- the connection


def _method_frame(channel: int, sig: tuple[int, int], args: bytes = b"") -> bytes:
    payload = _U16.pack(sig[0]) + _U16.pack(sig[1]) + args
    return _FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


class Connection:
    """One AMQP connection with one channel (number 1); `Connection` is also the channel.

    Not thread-safe: one thread drives it, calling `read_deliveries` often enough to
    answer heartbeats (the bridge loop does so every few milliseconds).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5672,
        username: str = "guest",
        password: str = "guest",  # noqa: S107 - the AMQP default account
        vhost: str = "/",
        *,
        ssl: bool = False,
        heartbeat_s: int = 30,
        connect_timeout_s: float = 10.0,
        frame_max: int = 131072,
    ) -> None:
        self.host, self.port, self.vhost = host, port, vhost
        self._username, self._password = username, password
        self._ssl = ssl
        self._heartbeat_s = heartbeat_s
        self._connect_timeout_s = connect_timeout_s
        self._frame_max_wanted = frame_max
        self.frame_max = frame_max
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0
        self._deliveries: deque[Delivery] = deque()
        self._partial: Delivery | None = None
        self._partial_size = 0
        self._partial_chunks: list[bytes] = []
        self._last_recv = 0.0
        self._last_send = 0.0
        self.blocked = False
        self.server_properties: dict[str, Any] = {}
        self.channel_id = 1
        self._confirm = False
        self._next_publish_seq = 1
        self._confirmed_upto = 0
        self._nacked: set[int] = set()
        self._confirmed_set: set[int] = set()
        self.closed = True

    # ------------------------------------------------------------ lifecycle

    def connect(self) -> Connection:
        sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self._ssl:
            ctx = ssl_module.create_default_context()
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        self._sendall(b"AMQP\x00\x00\x09\x01")
        start = self._wait_method(CONNECTION_START, channel=0)
        self.server_properties, _ = _table(start, 2)
        client_props = {
            "product": "abacus-bridge",
            "capabilities": {
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "publisher_confirms": True,
                "basic.nack": True,
            },
        }
        response = b"\x00" + self._username.encode() + b"\x00" + self._password.encode()
        args = (
            encode_table(client_props)
            + _enc_shortstr("PLAIN")
            + _U32.pack(len(response))
            + response
            + _enc_shortstr("en_US")
        )
        self._send_method(CONNECTION_START_OK, args, channel=0)
        tune = self._wait_method(CONNECTION_TUNE, channel=0)
        channel_max, frame_max, heartbeat = struct.unpack_from(">HIH", tune, 0)
        self.frame_max = min(x for x in (frame_max, self._frame_max_wanted) if x) or 131072
        if heartbeat and self._heartbeat_s:
            self._heartbeat_s = min(heartbeat, self._heartbeat_s)
        elif not heartbeat:
            self._heartbeat_s = self._heartbeat_s or 0
        self._send_method(
            CONNECTION_TUNE_OK,
            struct.pack(">HIH", channel_max or 1, self.frame_max, self._heartbeat_s),
            channel=0,
        )
        self._send_method(CONNECTION_OPEN, _enc_shortstr(self.vhost) + b"\x00\x00", channel=0)
        self._wait_method(CONNECTION_OPEN_OK, channel=0)
        self.closed = False
        self._send_method(CHANNEL_OPEN, b"\x00")
        self._wait_method(CHANNEL_OPEN_OK)
        sock.settimeout(None)
        return self

    def close(self) -> None:
        """Close politely if possible; unacked messages go back to their queue."""
        if self.sock is None:
            return
        try:
            if not self.closed:
                self.closed = True
                self._send_method(
                    CONNECTION_CLOSE, _U16.pack(200) + _enc_shortstr("bye") + b"\x00" * 4, 0
                )
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    sig, _, _ = self._read_method(deadline - time.monotonic())
                    if sig == CONNECTION_CLOSE_OK or sig is None:
                        break
        except (OSError, AmqpError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a handshake."""
        self.closed = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ low level I/O

    def _sendall(self, data: bytes) -> None:
        if self.sock is None:
            raise ConnectionError_("connection is closed")
        self.sock.sendall(data)
        self._last_send = time.monotonic()

    def _send_method(self, sig: tuple[int, int], args: bytes = b"", channel: int = 1) -> None:
        self._sendall(_method_frame(channel, sig, args))

    def _fill(self, timeout: float | None) -> bool:
        """Read what the socket has (waiting up to `timeout`); False on timeout."""
        sock = self.sock
        if sock is None:
            raise ConnectionError_("connection is closed")
        if timeout is not None and not (isinstance(sock, ssl_module.SSLSocket) and sock.pending()):
            ready, _, _ = select.select([sock], [], [], max(timeout, 0.0))
            if not ready:
                return False
        if self._pos:
            if self._pos >= len(self._buf):
                self._buf.clear()
            else:
                del self._buf[: self._pos]
            self._pos = 0
        data = sock.recv(_RECV_BYTES)
        if not data:
            raise ConnectionError_("the server closed the connection")
        self._buf += data
        self._last_recv = time.monotonic()
        return True

    def _next_frame(self) -> tuple[int, int, int, int] | None:
        """(type, channel, payload start, payload end) of the next whole frame, or None."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 7:
            return None
        ftype, channel, size = _FRAME_HEAD.unpack_from(buf, pos)
        if size > self.frame_max:
            raise ConnectionError_(f"frame of {size} bytes exceeds frame_max {self.frame_max}")
        end = pos + 7 + size
        if len(buf) < end + 1:
            return None
        if buf[end] != FRAME_END:
            raise ConnectionError_("bad frame end octet: lost framing")
        self._pos = end + 1
        return ftype, channel, pos + 7, end

    def _protocol_error(self, exc: BaseException) -> ConnectionError_:
        """A frame the server built wrongly (a truncated method or content header): the
        connection cannot be trusted any more; the caller reconnects."""
        self.abort()
        return ConnectionError_(f"malformed frame from the server: {type(exc).__name__}: {exc}")

    def _handle_frame(
        self, ftype: int, channel: int, start: int, end: int
    ) -> tuple[tuple[int, int], int, int] | None:
        """Deliveries and async methods are handled here; other methods returned."""
        buf = self._buf
        if ftype == FRAME_METHOD:
            cls, meth = _U16.unpack_from(buf, start)[0], _U16.unpack_from(buf, start + 2)[0]
            sig = (cls, meth)
            if sig == BASIC_DELIVER:
                tag, pos = _shortstr(buf, start + 4)
                (dtag,) = _U64.unpack_from(buf, pos)
                redelivered = bool(buf[pos + 8] & 1)
                exchange, pos = _shortstr(buf, pos + 9)
                routing_key, pos = _shortstr(buf, pos)
                self._partial = Delivery(dtag, redelivered, exchange, routing_key, tag)
                return None
            if sig in (BASIC_ACK, BASIC_NACK):
                (dtag,) = _U64.unpack_from(buf, start + 4)
                multiple = bool(buf[start + 12] & 1)
                self._on_confirm(dtag, multiple, nack=sig == BASIC_NACK)
                return None
            if sig == CHANNEL_CLOSE:
                code = _U16.unpack_from(buf, start + 4)[0]
                text, _ = _shortstr(buf, start + 6)
                try:
                    self._send_method(CHANNEL_CLOSE_OK)
                finally:
                    self.abort()
                raise ChannelError(f"channel closed by the server: {code} {text}", code)
            if sig == CONNECTION_CLOSE:
                code = _U16.unpack_from(buf, start + 4)[0]
                text, _ = _shortstr(buf, start + 6)
                try:
                    self._send_method(CONNECTION_CLOSE_OK, channel=0)
                finally:
                    self.abort()
                raise ConnectionError_(f"connection closed by the server: {code} {text}", code)
            if sig == CONNECTION_BLOCKED:
                self.blocked = True
                return None
            if sig == CONNECTION_UNBLOCKED:
                self.blocked = False
                return None
            if sig == BASIC_CANCEL and channel != 0:
                raise ChannelError("the server cancelled the consumer (queue deleted?)", 0)
            return sig, start + 4, end
        if ftype == FRAME_HEADER:
            d = self._partial
            if d is None:
                return None  # a returned message's header: ignored
            if end - start < 14:
                raise TableError(f"content header of {end - start} bytes, under 14")
            _, _, size, flags = _HEADER_HEAD.unpack_from(buf, start)
            if flags:
                try:
                    d.properties = decode_properties(bytes(buf[start:end]), 14, flags, True)
                except TableError as exc:  # the publisher's bytes: the message carries it
                    d.error = f"malformed content header: {exc}"
            self._partial_size = size
            if size == 0:
                self._deliveries.append(d)
                self._partial = None
            return None
        if ftype == FRAME_BODY:
            d = self._partial
            if d is None:
                return None
            chunk = bytes(buf[start:end])
            if not self._partial_chunks and len(chunk) == self._partial_size:
                d.body = chunk
            else:
                self._partial_chunks.append(chunk)
                got = sum(len(c) for c in self._partial_chunks)
                if got < self._partial_size:
                    return None
                d.body = b"".join(self._partial_chunks)
                self._partial_chunks = []
            self._deliveries.append(d)
            self._partial = None
            return None
        return None  # heartbeat

    def _read_method(self, timeout: float | None) -> tuple[Any, bytes, int]:
        """The next non-delivery method (sig, args, channel); (None, b"", 0) on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._next_frame()
            if frame is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None, b"", 0
                if not self._fill(left):
                    return None, b"", 0
                continue
            try:
                got = self._handle_frame(*frame)
            except _MALFORMED as exc:
                raise self._protocol_error(exc) from None
            if got is not None:
                sig, start, end = got
                return sig, bytes(self._buf[start:end]), frame[1]

    def _wait_method(self, sig: tuple[int, int], channel: int = 1, timeout: float = 30.0) -> bytes:
        got, args, _ = self._read_method(timeout)
        if got is None:
            raise ConnectionError_(f"no answer from the server within {timeout:.0f}s")
        if got != sig:
            raise AmqpError(f"unexpected AMQP method {got}, wanted {sig}")
        return args

    def _rpc(self, sig: tuple[int, int], args: bytes, ok: tuple[int, int]) -> bytes:
        self._send_method(sig, args)
        return self._wait_method(ok)

    # ------------------------------------------------------------ heartbeats

    def heartbeat_tick(self) -> None:
        """Send a heartbeat when idle; raise when the server has gone silent."""
        if not self._heartbeat_s or self.sock is None:
            return
        now = time.monotonic()
        if now - self._last_send > self._heartbeat_s / 2:
            self._sendall(_FRAME_HEAD.pack(FRAME_HEARTBEAT, 0, 0) + FRAME_END_BYTE)
        if self._last_recv and now - self._last_recv > self._heartbeat_s * 2:
            raise ConnectionError_("missed heartbeats from the server")

    # ------------------------------------------------------------ channel methods

    def exchange_declare(
        self,
        exchange: str,
        type: str,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = True,
        nowait: bool = False,
        arguments: dict[str, Any] | None = None,
        internal: bool = False,
    ) -> None:
        bits = passive | durable << 1 | auto_delete << 2 | internal << 3
        args = (
            b"\x00\x00"
            + _enc_shortstr(exchange)
            + _enc_shortstr(type)
            + _U8.pack(bits)
            + encode_table(arguments)
        )
        self._rpc(EXCHANGE_DECLARE, args, EXCHANGE_DECLARE_OK)

    def exchange_delete(self, exchange: str, if_unused: bool = False) -> None:
        args = b"\x00\x00" + _enc_shortstr(exchange) + _U8.pack(int(if_unused))
        self._rpc(EXCHANGE_DELETE, args, EXCHANGE_DELETE_OK)

    def queue_declare(
        self,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = True,
        nowait: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> tuple[str, int, int]:
        """(queue, message_count, consumer_count), like py-amqp."""
        bits = passive | durable << 1 | exclusive << 2 | auto_delete << 3
        args = b"\x00\x00" + _enc_shortstr(queue) + _U8.pack(bits) + encode_table(arguments)
        ok = self._rpc(QUEUE_DECLARE, args, QUEUE_DECLARE_OK)
        name, pos = _shortstr(ok, 0)
        messages, consumers = struct.unpack_from(">II", ok, pos)
        return name, messages, consumers

    def queue_bind(
        self,
        queue: str,
        exchange: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        args = (
            b"\x00\x00"
            + _enc_shortstr(queue)
            + _enc_shortstr(exchange)
            + _enc_shortstr(routing_key)
            + b"\x00"
            + encode_table(arguments)
        )
        self._rpc(QUEUE_BIND, args, QUEUE_BIND_OK)

    def queue_purge(self, queue: str) -> int:
        ok = self._rpc(QUEUE_PURGE, b"\x00\x00" + _enc_shortstr(queue) + b"\x00", QUEUE_PURGE_OK)
        return int(_U32.unpack_from(ok, 0)[0])

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False) -> int:
        bits = if_unused | if_empty << 1
        args = b"\x00\x00" + _enc_shortstr(queue) + _U8.pack(bits)
        ok = self._rpc(QUEUE_DELETE, args, QUEUE_DELETE_OK)
        return int(_U32.unpack_from(ok, 0)[0])

    def basic_qos(self, prefetch_size: int, prefetch_count: int, a_global: bool) -> None:
        args = _U32.pack(prefetch_size) + _U16.pack(prefetch_count) + _U8.pack(int(a_global))
        self._rpc(BASIC_QOS, args, BASIC_QOS_OK)

    def basic_consume(self, queue: str, consumer_tag: str = "", exclusive: bool = False) -> str:
        bits = exclusive << 2  # no_local=0, no_ack=0
        args = (
            b"\x00\x00"
            + _enc_shortstr(queue)
            + _enc_shortstr(consumer_tag)
            + _U8.pack(bits)
            + encode_table(None)
        )
        ok = self._rpc(BASIC_CONSUME, args, BASIC_CONSUME_OK)
        return _shortstr(ok, 0)[0]

    def basic_cancel(self, consumer_tag: str) -> None:
        self._rpc(BASIC_CANCEL, _enc_shortstr(consumer_tag) + b"\x00", BASIC_CANCEL_OK)

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._send_method(BASIC_ACK, _U64.pack(delivery_tag) + _U8.pack(int(multiple)))

    def read_deliveries(self, timeout: float, max_count: int = 4096) -> list[Delivery]:
        """Deliveries already received, else wait up to `timeout` for some."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.read_deliveries_buffered(max_count)
            if out:
                return out
            # nothing parsed yet: read the socket (without waiting when the time is up)
            if not self._fill(max(0.0, deadline - time.monotonic())):
                return out

    def read_deliveries_buffered(self, max_count: int = 4096) -> list[Delivery]:
        """The deliveries whose frames are already received (no socket read).

        A delivery whose content header cannot be decoded comes out with `error` set; a
        frame the server built wrongly raises ConnectionError_ (the connection is over)."""
        out: list[Delivery] = []
        try:
            while len(out) < max_count:
                frame = self._next_frame()
                if frame is None:
                    break
                got = self._handle_frame(*frame)
                if got is not None:
                    raise AmqpError(f"unexpected AMQP method {got[0]} while consuming")
                while self._deliveries and len(out) < max_count:
                    out.append(self._deliveries.popleft())
        except _MALFORMED as exc:
            raise self._protocol_error(exc) from None
        return out

    # ------------------------------------------------------------ publishing

    def confirm_select(self) -> None:
        self._rpc(CONFIRM_SELECT, b"\x00", CONFIRM_SELECT_OK)
        self._confirm = True

    def _on_confirm(self, tag: int, multiple: bool, nack: bool) -> None:
        if nack:
            if multiple:
                self._nacked.update(range(self._confirmed_upto + 1, tag + 1))
            else:
                self._nacked.add(tag)
        if multiple:
            self._confirmed_upto = max(self._confirmed_upto, tag)
        else:
            self._confirmed_set.add(tag)
        while self._confirmed_upto + 1 in self._confirmed_set:
            self._confirmed_upto += 1
        if self._confirmed_set:
            self._confirmed_set = {t for t in self._confirmed_set if t > self._confirmed_upto}

    def publish_frames(
        self,
        body: bytes,
        exchange: str = "",
        routing_key: str = "",
        properties: dict[str, Any] | None = None,
        *,
        encoded_properties: tuple[int, bytes] | None = None,
    ) -> bytes:
        """The frames of one Basic.Publish (to batch many in one `send_raw`).

        `encoded_properties` (flags, property list) are sent as given, unchecked: tests use
        it to publish what a hostile client could (malformed tables, invalid UTF-8)."""
        method = (
            _U16.pack(60)
            + _U16.pack(40)
            + b"\x00\x00"
            + _enc_shortstr(exchange)
            + _enc_shortstr(routing_key)
            + b"\x00"
        )
        if encoded_properties is None:
            flags, plist = encode_properties(properties or {})
        else:
            flags, plist = encoded_properties
        header = _HEADER_HEAD.pack(60, 0, len(body), flags) + plist
        parts = [
            _FRAME_HEAD.pack(FRAME_METHOD, 1, len(method)),
            method,
            FRAME_END_BYTE,
            _FRAME_HEAD.pack(FRAME_HEADER, 1, len(header)),
            header,
            FRAME_END_BYTE,
        ]
        step = self.frame_max - 8
        for i in range(0, len(body), step):
            chunk = body[i : i + step]
            parts += [_FRAME_HEAD.pack(FRAME_BODY, 1, len(chunk)), chunk, FRAME_END_BYTE]
        if self._confirm:
            self._next_publish_seq += 1
        return b"".join(parts)

    def send_raw(self, data: bytes) -> None:
        self._sendall(data)

    def basic_publish(
        self,
        body: bytes,
        exchange: str = "",
        routing_key: str = "",
        properties: dict[str, Any] | None = None,
    ) -> None:
        self._sendall(self.publish_frames(body, exchange, routing_key, properties))

    def wait_for_confirms(self, timeout: float = 30.0) -> None:
        """Block until every publish so far is confirmed; raise if one was nacked."""
        target = self._next_publish_seq - 1
        deadline = time.monotonic() + timeout
        while self._confirmed_upto < target:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AmqpError("publisher confirms timed out")
            frame = self._next_frame()
            if frame is None:
                self._fill(left)
                continue
            try:
                self._handle_frame(*frame)
            except _MALFORMED as exc:
                raise self._protocol_error(exc) from None
        if self._nacked:
            n = len(self._nacked)
            self._nacked.clear()
            raise AmqpError(f"the broker refused {n} published message(s)")
