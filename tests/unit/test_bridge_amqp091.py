"""The bridge's AMQP 0-9-1 codec (pure parts): field tables, properties, frame parsing."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from amqp import serialization as pyamqp

from bridge import amqp091 as A
from legacy.protocol import task_message


def test_celery_headers_round_trip_and_match_py_amqp() -> None:
    m = task_message('{"event_id": "E"}')
    raw = A.encode_table(m.headers)
    assert A.decode_table(raw) == m.headers
    theirs = pyamqp.dumps("F", [m.headers])
    assert A.decode_table(theirs) == m.headers


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**31,
        -(2**40),
        1.5,
        "",
        "é☕",
        b"\x00\xff",
        [1, [None, "x"]],
        {"nested": {"a": 1}},
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        Decimal("12.34"),
    ],
)
def test_field_values_round_trip(value: object) -> None:
    assert A.decode_table(A.encode_table({"k": value})) == {"k": value}


def test_py_amqp_encoded_types_decode() -> None:
    table = {"s": "x", "i": 7, "big": 2**40, "f": 0.25, "b": True, "n": None, "l": [1, "a"]}
    assert A.decode_table(pyamqp.dumps("F", [table])) == table


def test_properties_round_trip() -> None:
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"task": "t", "id": "i"},
        "delivery_mode": 2,
        "priority": 0,
        "correlation_id": "c",
        "message_id": "m",
        "timestamp": 1700000000,
        "app_id": "a",
    }
    flags, plist = A.encode_properties(props)
    assert A.decode_properties(plist, 0, flags) == props


def _frame(ftype: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, 1, len(payload)) + payload + b"\xce"


def _deliver(tag: int, body: bytes, props: dict[str, object], chunk: int = 1 << 20) -> bytes:
    meth = (
        struct.pack(">HH", 60, 60)
        + A._enc_shortstr("ctag")
        + struct.pack(">QB", tag, 1)
        + A._enc_shortstr("ex")
        + A._enc_shortstr("rk")
    )
    flags, plist = A.encode_properties(props)
    header = struct.pack(">HHQH", 60, 0, len(body), flags) + plist
    out = _frame(1, meth) + _frame(2, header)
    for i in range(0, len(body), chunk):
        out += _frame(3, body[i : i + chunk])
    return out


def test_deliveries_parse_from_a_byte_stream_split_anywhere() -> None:
    m = task_message('{"company_id": "C"}')
    props = {**m.properties, "headers": m.headers}
    stream = (
        _deliver(1, m.body, props)
        + _deliver(2, b"", {"content_type": "x"})
        + _deliver(3, b"abcdef" * 100, {}, chunk=7)
    )
    for cut in (1, 5, 13, 64, len(stream)):
        conn = A.Connection()
        got: list[A.Delivery] = []
        for i in range(0, len(stream), cut):
            conn._buf += stream[i : i + cut]
            while True:
                frame = conn._next_frame()
                if frame is None:
                    break
                assert conn._handle_frame(*frame) is None
            got += list(conn._deliveries)
            conn._deliveries.clear()
        assert [d.delivery_tag for d in got] == [1, 2, 3]
        assert got[0].body == m.body and got[0].properties == props
        assert got[0].redelivered and got[0].exchange == "ex" and got[0].routing_key == "rk"
        assert got[1].body == b"" and got[1].properties == {"content_type": "x"}
        assert got[2].body == b"abcdef" * 100


def test_bad_frame_end_is_a_connection_error() -> None:
    conn = A.Connection()
    conn._buf += struct.pack(">BHI", 8, 0, 0) + b"\x00"
    with pytest.raises(A.ConnectionError_):
        conn._next_frame()


def test_channel_close_from_the_server_raises_with_the_code() -> None:
    conn = A.Connection()

    class FakeSock:
        def sendall(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

    conn.sock = FakeSock()  # type: ignore[assignment]
    args = (
        struct.pack(">HH", 20, 40)
        + struct.pack(">H", 406)
        + A._enc_shortstr("PRECONDITION_FAILED - unknown delivery tag 7")
        + struct.pack(">HH", 60, 80)
    )
    conn._buf += _frame(1, args)
    frame = conn._next_frame()
    assert frame is not None
    with pytest.raises(A.ChannelError) as info:
        conn._handle_frame(*frame)
    assert info.value.reply_code == 406
    assert conn.sock is None


def test_publisher_confirms_mixing_single_and_multiple_acks() -> None:
    conn = A.Connection()
    conn._confirm = True
    conn._next_publish_seq = 5  # four published
    conn._on_confirm(2, multiple=False, nack=False)
    conn._on_confirm(4, multiple=False, nack=False)
    assert conn._confirmed_upto == 0
    conn._on_confirm(1, multiple=True, nack=False)
    assert conn._confirmed_upto == 2
    conn._on_confirm(3, multiple=False, nack=False)
    assert conn._confirmed_upto == 4
    conn.wait_for_confirms(timeout=0.1)


def test_lazy_table_finds_keys_without_being_fooled_by_values() -> None:
    table = {
        "argsrepr": "\x04taskS fake",  # the key's bytes inside an earlier value
        "nested": {"task": "inner", "id": 1},
        "lang": "py",
        "task": "legacy.aggregate",
        "id": "T-1",
        "n": None,
    }
    lazy = A.LazyTable(A.encode_table(table))
    assert lazy.get("task") == "legacy.aggregate"
    assert lazy["id"] == "T-1"
    assert lazy.get("n", "default") is None
    assert lazy.get("compression") is None
    assert "compression" not in lazy and "n" in lazy
    with pytest.raises(KeyError):
        lazy["missing"]
    assert dict(lazy) == table
    assert lazy == table


def test_lazy_table_agrees_with_full_decoding_on_celery_headers() -> None:
    m = task_message('{"event_id": "E"}')
    lazy = A.LazyTable(A.encode_table(m.headers))
    for key in [*m.headers, "compression", "x"]:
        assert lazy.get(key, "absent") == m.headers.get(key, "absent")
