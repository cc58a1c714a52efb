"""Poison never stops the bridge: every AMQP-level poison message (tests/poison_amqp.py)
and every poison event line (counting.corpus.poison_lines) decodes to a record, forwarded
or dead-lettered with its reason; every record's headers are valid UTF-8, with
`escaped: 1` when a value had to be escaped; an unexpected error dead-letters the message
(`bridge_error`) instead of ending the loop."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import amqp091 as A
from bridge.decode import MAX_EVENT_BYTES, Bad, Good, Incoming, Reason, decode
from bridge.service import Bridge
from counting.corpus import poison_lines
from settings.model import Settings
from tests import poison_amqp
from tests.unit.test_bridge_service import FakeConn, FakeProducer, delivery
from wire.task import task_message


def as_delivery(m: poison_amqp.PoisonMessage) -> A.Delivery:
    """What the client hands over for this message: its frames parsed by the client."""
    conn = A.Connection()
    publish = poison_amqp.frames(m.body, m.properties, "ex", "rk", conn.frame_max)
    # the broker delivers the publish's content header and body frames after a Deliver
    size = struct.unpack_from(">I", publish, 3)[0]
    deliver = (
        struct.pack(">HH", 60, 60)
        + A._enc_shortstr("ctag")
        + struct.pack(">QB", 1, 0)
        + A._enc_shortstr("ex")
        + A._enc_shortstr("rk")
    )
    conn._buf += struct.pack(">BHI", 1, 1, len(deliver)) + deliver + b"\xce"
    conn._buf += publish[8 + size :]
    (d,) = conn.read_deliveries_buffered()
    return d


def check_headers(record: Good | Bad) -> dict[str, bytes]:
    """Every header value is valid UTF-8, `escaped` is set iff a value was escaped."""
    h = dict(record.headers)
    assert len(h) == len(record.headers), "a header appears twice"
    for name, value in record.headers:
        assert isinstance(value, bytes), name
        value.decode("utf-8")  # raises if not
    return h


@pytest.mark.parametrize("m", poison_amqp.messages(), ids=lambda m: m.name)
def test_amqp_poison_is_forwarded_or_dead_lettered_with_its_reason(
    m: poison_amqp.PoisonMessage,
) -> None:
    out = decode(as_delivery(m), received_ms=1)
    h = check_headers(out)
    if m.expect == poison_amqp.FORWARD:
        assert isinstance(out, Good), out
        assert out.value == m.event
        assert out.key == b"COM-AP"
    else:
        assert isinstance(out, Bad), out
        assert out.reason.value == m.expect
        assert h["reason"] == m.expect.encode()
        assert h["detail"] and out.value == m.body[: len(out.value)]
    assert (h.get("escaped") == b"1") is m.escaped


def test_escaped_headers_keep_the_bytes_readable() -> None:
    (m,) = [x for x in poison_amqp.messages() if x.name == "message_id of invalid UTF-8"]
    h = check_headers(decode(as_delivery(m), 0))
    assert h["message_id"] == b"M-\\xff\\xfe"


def _celery(raw: bytes) -> Incoming:
    m = task_message("{}", task_id="T-line")
    return Incoming(poison_amqp.celery_body(raw), {**m.properties, "headers": m.headers})


@pytest.mark.parametrize(("name", "raw"), poison_lines(), ids=[n for n, _ in poison_lines()])
def test_poison_event_lines_in_a_celery_task(name: str, raw: bytes) -> None:
    """Forwarded byte for byte when the text can travel in a task (UTF-8, <= 1 MiB): the
    contract is applied by Abacus, not the bridge; else dead-lettered with its reason."""
    out = decode(_celery(raw), 0)
    check_headers(out)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert isinstance(out, Bad) and out.reason is Reason.BAD_ENVELOPE
        return
    if len(raw) > MAX_EVENT_BYTES:
        assert isinstance(out, Bad) and out.reason is Reason.TOO_LARGE
    else:
        assert isinstance(out, Good), out
        assert out.value == raw


@pytest.mark.parametrize(("name", "raw"), poison_lines(), ids=[n for n, _ in poison_lines()])
def test_poison_event_lines_as_plain_json_messages(name: str, raw: bytes) -> None:
    out = decode(Incoming(raw, {"content_type": "application/json"}), 0)
    check_headers(out)
    if len(raw) > MAX_EVENT_BYTES:
        assert isinstance(out, Bad) and out.reason is Reason.TOO_LARGE
    elif isinstance(out, Bad):
        assert out.reason is Reason.BROKEN_JSON
        assert out.value == raw
    else:
        assert out.value == raw


texts = st.text() | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape"))
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=200) | st.sampled_from([b'[["{}"], {}, {}]', b"{}", b"[]"]),
    st.dictionaries(
        st.sampled_from(
            ["content_type", "content_encoding", "message_id", "correlation_id", "timestamp"]
        ),
        anything | st.sampled_from(["application/json", "utf-8"]),
    ),
    st.dictionaries(st.sampled_from(["task", "id", "compression", "x"]), anything)
    | st.sampled_from([{"task": "legacy.aggregate", "id": "T"}]),
    texts,
)
def test_fuzz_decode_is_total_and_its_headers_always_writable(
    body: bytes, props: dict[str, Any], headers: dict[str, Any], routing_key: str
) -> None:
    msg = Incoming(body, {**props, "headers": headers}, routing_key=routing_key, exchange="e")
    check_headers(decode(msg, 0))


# ---------------------------------------------------------------- the loop survives


@pytest.fixture
def bridge(tmp_path: Path) -> tuple[Bridge, FakeProducer, FakeConn]:
    b = Bridge(Settings(), "shadow", status_file=tmp_path / "s.json")
    producer, conn = FakeProducer(), FakeConn()
    b._producer, b._conn, b._gen = producer, conn, 1  # type: ignore[assignment]
    return b, producer, conn


def test_an_error_while_decoding_dead_letters_the_message(
    bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, producer, conn = bridge

    def broken(msg: Any, received_ms: int) -> Any:
        raise RuntimeError("a decoder bug")

    monkeypatch.setattr("bridge.service.decode", broken)
    b._handle(delivery(1))
    topic, value, _ = producer.sent[0]
    assert topic == b.dlq_topic and value == delivery(1).body
    assert producer.headers[0]["reason"] == b"bridge_error"
    assert b"a decoder bug" in producer.headers[0]["detail"]
    producer.confirm(0)
    b._ack_ready()
    assert conn.acks == [1]
    assert b.counts.dead_lettered_by_reason == {"bridge_error": 1}


def test_a_record_the_producer_cannot_take_is_dead_lettered(bridge: Any) -> None:
    b, producer, conn = bridge
    producer.refuse = TypeError("header value of a wrong type")  # once, like a bad header
    b._handle(delivery(1))
    topic, value, _ = producer.sent[0]
    assert topic == b.dlq_topic and value == delivery(1).body
    assert producer.headers[0]["reason"] == b"bridge_error"
    producer.confirm(0)
    b._ack_ready()
    assert conn.acks == [1]


def test_a_delivery_with_a_malformed_content_header_is_dead_lettered(bridge: Any) -> None:
    b, producer, _conn = bridge
    d = delivery(1)
    d.properties, d.error = {}, "malformed content header: truncated"
    b._handle(d)
    assert producer.sent[0][0] == b.dlq_topic
    assert producer.headers[0]["reason"] == b"bad_headers"


def test_an_error_quoting_a_publishers_bytes_is_logged_and_written_escaped(
    bridge: Any, tmp_path: Path
) -> None:
    from bridge.status import read_status

    b, _, _ = bridge
    b._error("decoding", ValueError("task legacy.aggregate\udcff is odd"))
    b._tick(force=True)
    status = read_status(b.status_file)
    assert status is not None
    assert status["last_error"] == "decoding: task legacy.aggregate\\udcff is odd"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), st.sampled_from([b"", b"\x00\x00\x00\x10", b"\xff\xff\xff\xff"]))
def test_fuzz_decode_of_a_message_whose_headers_table_is_any_bytes(
    raw: bytes, prefix: bytes
) -> None:
    """The client hands the headers table over encoded; whatever its bytes, decode gives a
    record (bad_headers when it cannot find its keys), never an exception."""
    m = task_message('{"company_id": "C"}')
    props = {**m.properties, "headers": A.LazyTable(prefix + raw)}
    out = decode(Incoming(m.body, props), 0)
    check_headers(out)
    if isinstance(out, Bad):
        assert out.reason in (Reason.BAD_HEADERS, Reason.UNKNOWN_TASK, Reason.BAD_ENCODING)
