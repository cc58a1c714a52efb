"""Bridge decoding (pure): AMQP message -> Kafka record or dead letter, case by case."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from bridge.decode import (
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    MAX_TASK_BODY_BYTES,
    Bad,
    Good,
    Incoming,
    Reason,
    dead_letter,
    decode,
    key_of,
)
from counting import parse_event
from counting.corpus import tricky_lines
from wire.task import TASK_NAME, task_message

EVENT = {
    "event_id": "E1",
    "company_id": "COM-ü",
    "customer_id": "CUS1",
    "statistic_id": "opened",
    "timestamp": 1544153562,
}
RAW = json.dumps(EVENT, ensure_ascii=False)


def celery(raw: str, **props: object) -> Incoming:
    m = task_message(raw, task_id="T-1")
    properties = {**m.properties, "headers": m.headers, **props}
    return Incoming(m.body, properties, routing_key="aggregate", exchange="abacus.events")


def hdr(record: Good | Bad) -> dict[str, bytes]:
    return dict(record.headers)


def test_celery_task_forwards_the_raw_event_text_keyed_by_company() -> None:
    out = decode(celery(RAW, message_id="M-1", timestamp=1700000000), received_ms=123)
    assert isinstance(out, Good)
    assert out.value == RAW.encode("utf-8")
    assert out.key == "COM-ü".encode()
    h = hdr(out)
    assert h["task_id"] == b"T-1"
    assert h["message_id"] == b"M-1"
    assert h["content_type"] == b"application/json"
    assert h["routing_key"] == b"aggregate"
    assert h["exchange"] == b"abacus.events"
    assert h["redelivered"] == b"false"
    assert h["published_at"] == b"1700000000"
    assert h["bridge_received_ms"] == b"123"


def test_every_line_of_the_tricky_corpus_is_forwarded_byte_for_byte() -> None:
    """The bridge applies no contract rule: invalid events go through, Abacus rejects them."""
    for line in tricky_lines():
        out = decode(celery(line), received_ms=0)
        if len(line.encode("utf-8")) > MAX_EVENT_BYTES:
            assert isinstance(out, Bad) and out.reason is Reason.TOO_LARGE
            continue
        assert isinstance(out, Good), line[:80]
        assert out.value == line.encode("utf-8")
        parsed = parse_event(out.value)
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # the corpus nests one line past any parser
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("company_id"), str):
            assert out.key == obj["company_id"].encode()
        else:
            assert out.key == b""
        assert parsed is not None


def test_plain_json_event_is_forwarded_as_is() -> None:
    body = RAW.encode()
    out = decode(Incoming(body, {"content_type": "application/json"}), received_ms=1)
    assert isinstance(out, Good)
    assert out.value == body and out.key == "COM-ü".encode()
    assert "task_id" not in hdr(out)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('{"company_id": 5}', b""),
        ("[1, 2]", b""),
        ("not json", b""),
        ('{"company_id": ""}', b""),
        ('{"company_id": "C"}', b"C"),
        ('{"properties": {"company_id": "X"}}', b""),
    ],
)
def test_key_of(raw: str, key: bytes) -> None:
    assert key_of(raw) == key


def _bad(msg: Incoming) -> Bad:
    out = decode(msg, received_ms=5)
    assert isinstance(out, Bad), out
    h = hdr(out)
    assert h["reason"] == out.reason.value.encode()
    assert h["detail"] == out.detail.encode()
    assert h["original_size"] == str(len(msg.body)).encode()
    return out


def test_pickle_is_dead_lettered_and_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (pytest.fail, ("the bridge unpickled a message",))

    body = pickle.dumps(Boom())
    m = task_message(RAW)
    msg = Incoming(body, {"content_type": "application/x-python-serialize", "headers": m.headers})
    out = _bad(msg)
    assert out.reason is Reason.PICKLE
    assert out.value == body
    assert hdr(out)["task_id"] == m.task_id.encode()


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"content_type": "application/x-yaml"}, Reason.CONTENT_TYPE),
        ({"content_type": None}, Reason.CONTENT_TYPE),
        ({"content_type": "text/plain"}, Reason.CONTENT_TYPE),
        ({"content_encoding": "binary"}, Reason.BAD_ENCODING),
        ({"content_encoding": "latin-1"}, Reason.BAD_ENCODING),
    ],
)
def test_wrong_content_type_or_encoding(props: dict[str, object], reason: Reason) -> None:
    assert _bad(celery(RAW, **props)).reason is reason


def test_json_content_type_with_charset_is_accepted() -> None:
    out = decode(celery(RAW, content_type="application/json; charset=utf-8"), 0)
    assert isinstance(out, Good)


def test_compressed_body_is_dead_lettered() -> None:
    m = task_message(RAW)
    msg = Incoming(m.body, {**m.properties, "headers": {**m.headers, "compression": "zlib"}})
    assert _bad(msg).reason is Reason.BAD_ENCODING


def test_a_task_that_is_not_ours() -> None:
    m = task_message(RAW)
    msg = Incoming(m.body, {**m.properties, "headers": {**m.headers, "task": "other.task"}})
    out = _bad(msg)
    assert out.reason is Reason.UNKNOWN_TASK
    assert "other.task" in out.detail


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'[["{}"], {}, {}', Reason.BROKEN_JSON),
        (b"\xff\xfe[[]]", Reason.BROKEN_JSON),
        (b"", Reason.BROKEN_JSON),
        (b'{"args": ["x"]}', Reason.BAD_ENVELOPE),
        (b"[[], {}, {}]", Reason.BAD_ENVELOPE),
        (b'[["a", "b"], {}, {}]', Reason.BAD_ENVELOPE),
        (b'[[{"event_id": "E"}], {}, {}]', Reason.BAD_ENVELOPE),
        (b'[["x"], {"k": 1}, {}]', Reason.BAD_ENVELOPE),
        (b'[["\\ud800"], {}, {}]', Reason.BAD_ENVELOPE),
    ],
)
def test_broken_task_bodies(body: bytes, reason: Reason) -> None:
    m = task_message(RAW)
    out = _bad(Incoming(body, {**m.properties, "headers": m.headers}))
    assert out.reason is reason
    assert out.value == body


def test_plain_message_with_broken_json() -> None:
    out = _bad(Incoming(b'{"event_id": ', {"content_type": "application/json"}))
    assert out.reason is Reason.BROKEN_JSON


def test_celery_protocol_1_is_refused() -> None:
    body = json.dumps({"task": TASK_NAME, "id": "X", "args": [RAW], "kwargs": {}}).encode()
    out = _bad(Incoming(body, {"content_type": "application/json"}))
    assert out.reason is Reason.BAD_ENVELOPE
    assert hdr(out)["task_id"] == b"X"


def test_event_over_one_mib_is_too_large() -> None:
    raw = json.dumps({**EVENT, "pad": "x" * MAX_EVENT_BYTES})
    out = _bad(celery(raw))
    assert out.reason is Reason.TOO_LARGE
    plain = _bad(Incoming(raw.encode(), {"content_type": "application/json"}))
    assert plain.reason is Reason.TOO_LARGE


def test_event_of_exactly_one_mib_goes_through() -> None:
    base = json.dumps({**EVENT, "pad": ""})
    raw = json.dumps({**EVENT, "pad": "x" * (MAX_EVENT_BYTES - len(base))})
    assert len(raw.encode()) == MAX_EVENT_BYTES
    assert isinstance(decode(celery(raw), 0), Good)


def test_oversized_body_keeps_the_first_4_mib_and_the_original_size() -> None:
    body = b"x" * (MAX_TASK_BODY_BYTES + 10)
    out = _bad(Incoming(body, {"content_type": "application/x-python-serialize"}))
    assert out.reason is Reason.OVERSIZED_BODY
    assert out.value == body[:MAX_BODY_BYTES]
    assert hdr(out)["original_size"] == str(MAX_TASK_BODY_BYTES + 10).encode()


def test_a_body_no_event_fits_in_is_refused_before_parsing() -> None:
    """6 MiB + 64 KiB holds any event of <= 1 MiB, even one escaped byte by byte; a body
    one byte over is dead-lettered without being parsed (a parse would fail: not JSON)."""
    m = task_message(RAW)
    props = {**m.properties, "headers": m.headers}
    over = b"[" + b"1" * MAX_TASK_BODY_BYTES + b"]"
    assert _bad(Incoming(over, props)).reason is Reason.OVERSIZED_BODY
    event = "\x7f" * MAX_EVENT_BYTES  # each DEL is written \u007f by an ASCII encoder
    body = json.dumps([[event], {}, {"callbacks": None}]).encode()
    assert MAX_BODY_BYTES < len(body) <= MAX_TASK_BODY_BYTES
    out = decode(Incoming(body, props), 0)
    assert isinstance(out, Good) and out.value == event.encode()


def test_redelivered_flag_header() -> None:
    m = task_message(RAW)
    msg = Incoming(m.body, {**m.properties, "headers": m.headers}, redelivered=True)
    assert hdr(decode(msg, 0))["redelivered"] == b"true"


def test_dead_letter_after_kafka_refusal_keeps_the_original_body() -> None:
    msg = celery(RAW)
    out = dead_letter(msg, 9, Reason.KAFKA_REJECTED, "too big for the topic")
    assert out.value == msg.body
    assert hdr(out)["reason"] == b"kafka_rejected"
    assert hdr(out)["task_id"] == b"T-1"


def test_garbage_never_raises() -> None:
    samples = [b"", b"\x00" * 10, b"[", b"[[" * 10000, b"null", b'"s"', b"[null, null, null]"]
    for body in samples:
        for headers in ({}, {"task": TASK_NAME, "id": None}, {"task": b"\xff"}, {"task": 5}):
            out = decode(
                Incoming(body, {"content_type": "application/json", "headers": headers}), 0
            )
            assert isinstance(out, Good | Bad)


def test_decode_imports_no_io_library() -> None:
    code = textwrap.dedent("""
        import sys
        BLOCKED = {"confluent_kafka", "amqp", "kombu", "celery", "socket", "click", "pydantic"}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("forbidden import in bridge.decode: " + name)
        sys.meta_path.insert(0, Block())
        import bridge.decode
        print("pure")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure"
