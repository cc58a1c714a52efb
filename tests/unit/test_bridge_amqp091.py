"""The bridge's AMQP 0-9-1 codec (pure parts): field tables, properties, frame parsing."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from amqp import serialization as pyamqp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import amqp091 as A
from wire.task import task_message


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


# ---------------------------------------------------------------- fuzzing the decoders
# Whatever bytes a publisher (through the broker) or a broken server sends, the decoders
# return a value or raise TableError (tables, property lists) / ConnectionError_ (frames
# the server built wrongly); never IndexError, struct.error, RecursionError or another
# exception that would escape the bridge's handling.


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20).filter(lambda b: not _is_utf8(b))
)
field_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8).filter(lambda k: len(k.encode()) < 256), inner, max_size=4
        )
    ),
    max_leaves=20,
)
tables = st.dictionaries(
    st.text(max_size=10).filter(lambda k: len(k.encode()) < 256), field_values, max_size=6
)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decoded_or_table_error(data: bytes) -> object:
    try:
        return A.decode_table(data)
    except A.TableError:
        return A.TableError


@FUZZ
@given(tables)
def test_fuzz_tables_round_trip_and_every_key_is_found_lazily(table: dict[str, object]) -> None:
    raw = A.encode_table(table)
    assert A.decode_table(raw) == table
    lazy = A.LazyTable(raw)
    for key in [*table, "task", "absent"]:
        assert lazy.get(key, "ABSENT") == table.get(key, "ABSENT")


@FUZZ
@given(tables, st.data())
def test_fuzz_truncated_tables_raise_table_error(table: dict[str, object], data: object) -> None:
    raw = A.encode_table(table)
    cut = data.draw(st.integers(0, len(raw) - 1))  # type: ignore[attr-defined]
    with pytest.raises(A.TableError):
        A.decode_table(raw[:cut])
    if table:  # a lazy read of any key fails too, never reads past the table
        with pytest.raises(A.TableError):
            for key in [*table, "absent"]:
                A.LazyTable(raw[:cut]).get(key)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["task", "id", "compression", "x"]))
def test_fuzz_arbitrary_bytes_decode_or_raise_table_error(data: bytes, key: str) -> None:
    _decoded_or_table_error(data)
    _decoded_or_table_error(struct.pack(">I", len(data)) + data)  # a plausible length
    for raw in (data, struct.pack(">I", len(data)) + data):
        with contextlib.suppress(A.TableError):
            A.table_get(raw, key)


@FUZZ
@given(tables, st.integers(0, 255), st.binary(max_size=12), st.data())
def test_fuzz_wrong_types_and_corrupted_bytes(
    table: dict[str, object], kind: int, payload: bytes, data: object
) -> None:
    """An entry of any type octet (known or not) with any payload, and single-byte
    corruption anywhere in a valid table."""
    entry = A._enc_shortstr("k") + bytes((kind,)) + payload
    raw = A.encode_table(table)
    forged = struct.pack(">I", len(raw) - 4 + len(entry)) + raw[4:] + entry
    _decoded_or_table_error(forged)
    at = data.draw(st.integers(0, len(raw) - 1))  # type: ignore[attr-defined]
    byte = data.draw(st.integers(0, 255))  # type: ignore[attr-defined]
    corrupted = raw[:at] + bytes((byte,)) + raw[at + 1 :]
    _decoded_or_table_error(corrupted)
    for key in [*table, "task"]:
        with contextlib.suppress(A.TableError):
            A.LazyTable(corrupted).get(key)


@pytest.mark.parametrize("depth", [1, A.MAX_TABLE_DEPTH, A.MAX_TABLE_DEPTH + 1, 5000, 100_000])
@pytest.mark.parametrize("kind", ["table", "array"])
def test_nesting_is_bounded_without_recursion_errors(depth: int, kind: str) -> None:
    from tests.poison_amqp import nested_array, nested_table

    inner = bytes(nested_table(depth) if kind == "table" else nested_array(depth))
    raw = A._enc_shortstr("deep") + inner + A._enc_shortstr("task") + b"S" + struct.pack(">I", 1)
    raw = struct.pack(">I", len(raw + b"t")) + raw + b"t"
    lazy = A.LazyTable(raw)
    if depth <= A.MAX_TABLE_DEPTH:
        assert A.decode_table(raw)["task"] == "t"
        assert lazy.get("task") == "t"
    else:
        with pytest.raises(A.TableError, match="nested deeper"):
            A.decode_table(raw)
        with pytest.raises(A.TableError, match="nested deeper"):
            lazy.get("task")  # the walk to "task" has to cross the deep entry
        with pytest.raises(A.TableError):
            dict(lazy)
        assert "malformed" in repr(lazy)


@FUZZ
@given(st.integers(0, 0xFFFF), st.binary(max_size=200))
def test_fuzz_property_lists_decode_or_raise_table_error(flags: int, plist: bytes) -> None:
    for lazy in (True, False):
        try:
            props = A.decode_properties(plist, 0, flags, lazy)
        except A.TableError:
            continue
        assert set(props) <= set(A.PROPERTY_NAMES)


deliveries = st.lists(
    st.tuples(
        st.integers(0, 0xFFFF),  # property flags
        st.binary(max_size=64),  # property list: anything a publisher could smuggle
        st.binary(max_size=300),  # body
        st.integers(1, 50),  # body frame size
    ),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(deliveries, st.integers(1, 97))
def test_fuzz_a_stream_of_deliveries_with_malformed_headers(
    items: list[tuple[int, bytes, bytes, int]], cut: int
) -> None:
    """Every delivery comes out once, in order, with its body; a content header whose
    properties cannot be decoded is carried by the delivery (`error`), never raised."""
    stream = b""
    for tag, (flags, plist, body, chunk) in enumerate(items, start=1):
        meth = (
            struct.pack(">HH", 60, 60)
            + A._enc_shortstr("c")
            + struct.pack(">QB", tag, 0)
            + A._enc_shortstr("ex")
            + A._enc_shortstr(b"rk-\xff")
        )
        header = struct.pack(">HHQH", 60, 0, len(body), flags) + plist
        stream += _frame(1, meth) + _frame(2, header)
        for i in range(0, len(body), chunk):
            stream += _frame(3, body[i : i + chunk])
    conn = A.Connection()
    got: list[A.Delivery] = []
    for i in range(0, len(stream), cut):
        conn._buf += stream[i : i + cut]
        got += conn.read_deliveries_buffered()
    assert [d.delivery_tag for d in got] == list(range(1, len(items) + 1))
    for d, (flags, plist, body, _) in zip(got, items, strict=True):
        assert d.body == body
        assert d.routing_key == "rk-\udcff"
        if d.error:
            assert d.properties == {} and "malformed content header" in d.error
            with pytest.raises(A.TableError):
                A.decode_properties(plist, 0, flags, True)
        else:
            assert d.properties == (A.decode_properties(plist, 0, flags, True) if flags else {})


def test_an_oversized_frame_is_a_connection_error_not_a_huge_buffer() -> None:
    conn = A.Connection()
    conn._buf += struct.pack(">BHI", 3, 1, conn.frame_max + 1)
    with pytest.raises(A.ConnectionError_, match="exceeds frame_max"):
        conn._next_frame()


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack(">HH", 60, 60) + b"\x05ab",  # Basic.Deliver cut inside the consumer tag
        struct.pack(">HH", 60, 60) + A._enc_shortstr("c") + b"\x00\x00",  # cut in the tag
        struct.pack(">HH", 60, 80) + b"\x00",  # Basic.Ack cut short
        b"\x00",  # no method id at all
    ],
)
def test_a_truncated_method_frame_from_the_server_is_a_connection_error(payload: bytes) -> None:
    conn = A.Connection()
    conn._buf += _frame(1, payload)
    with pytest.raises(A.ConnectionError_, match="malformed frame"):
        conn.read_deliveries_buffered()


def test_a_content_header_shorter_than_its_fixed_part_is_a_connection_error() -> None:
    conn = A.Connection()
    meth = (
        struct.pack(">HH", 60, 60)
        + A._enc_shortstr("c")
        + struct.pack(">QB", 1, 0)
        + A._enc_shortstr("ex")
        + A._enc_shortstr("rk")
    )
    conn._buf += _frame(1, meth) + _frame(2, b"\x00\x3c\x00")
    with pytest.raises(A.ConnectionError_, match="malformed frame"):
        conn.read_deliveries_buffered()


@FUZZ
@given(st.lists(st.sampled_from("FA"), min_size=1, max_size=200), st.booleans())
def test_fuzz_nesting_of_tables_and_arrays_mixed(kinds: list[str], task_first: bool) -> None:
    """Tables and arrays nested in any order: decoded up to MAX_TABLE_DEPTH levels, a
    TableError beyond, whether the deep entry comes before or after the key read."""
    inner = b"V"
    for kind in reversed(kinds):
        if kind == "F":
            body = A._enc_shortstr("d") + inner
            inner = b"F" + struct.pack(">I", len(body)) + body
        else:
            inner = b"A" + struct.pack(">I", len(inner)) + inner
    deep = A._enc_shortstr("deep") + inner
    task = A._enc_shortstr("task") + b"S" + struct.pack(">I", 1) + b"t"
    entries = task + deep if task_first else deep + task
    raw = struct.pack(">I", len(entries)) + entries
    if len(kinds) <= A.MAX_TABLE_DEPTH:
        assert A.decode_table(raw)["task"] == "t"
    else:
        with pytest.raises(A.TableError, match="nested deeper"):
            A.decode_table(raw)
    lazy = A.LazyTable(raw)
    if task_first or len(kinds) <= A.MAX_TABLE_DEPTH:
        assert lazy.get("task") == "t"  # the deep entry is never crossed, or is legal
    else:
        with pytest.raises(A.TableError):
            lazy.get("task")
