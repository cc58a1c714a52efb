"""The poison corpus through the contract: each line counted or rejected as SEMANTICS says,
in bounded time, and every rejection writable as a dead letter."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from counting import Rejection, parse_event
from counting.corpus import poison_lines
from counting.events import BigInt, canonical_size, loads, nesting_depth
from counting.text import escape, escape_bytes

EXPECTED = {
    "lone surrogate in event_id": "not_json",
    "lone surrogate in company_id": "not_json",
    "lone surrogate in customer_id": "not_json",
    "lone surrogate in statistic_id": "not_json",
    "lone surrogate in timezone": "not_json",
    "lone low surrogate in event_id": "not_json",
    "lone surrogate in a property key": "not_json",
    "lone surrogate in a property value": "not_json",
    "invalid UTF-8 byte": "not_json",
    "UTF-8-encoded surrogate": "not_json",
    "surrogate pair (valid)": None,
    "NUL in ids and values (valid)": None,
    "bidi controls (valid)": None,
    "rich markup (valid)": None,
    "terminal escape (valid)": None,
    "spreadsheet formula (valid)": None,
    "event_id of 128 four-byte characters (valid)": None,
    "event_id of 129 characters": "bad_length",
    "event_id of 2 MiB": "too_large",
    "a 5,000-digit integer property (valid)": None,
    "a 5,000-digit timestamp": "bad_timestamp",
    "a 1,000,000-digit integer": "too_large",
    "4 MiB of digits": "too_large",
    "1e400 timestamp": "bad_timestamp",
    "NaN property": "bad_type",
    "deep nesting in a property (100,000 levels)": "not_json",
    "nesting of 500 levels (valid)": None,
    "duplicate keys: the last wins (valid)": None,
    "byte order mark": "not_json",
    "empty": "not_json",
    "whitespace": "not_json",
    "null": "not_an_object",
    "trailing garbage": "not_json",
    "path in timezone": "bad_timezone",
    "CQL in ids (valid)": None,
    "HTML in ids (valid)": None,
    "50 properties with long keys (valid)": None,
}


def test_the_corpus_is_the_table():
    assert [name for name, _ in poison_lines()] == list(EXPECTED)


@pytest.mark.parametrize(("name", "raw"), poison_lines(), ids=[n for n, _ in poison_lines()])
def test_each_poison_line_is_counted_or_rejected_with_its_reason(name, raw):
    parsed = parse_event(raw)
    reason = parsed.reason.value if isinstance(parsed, Rejection) else None
    assert reason == EXPECTED[name]
    if isinstance(parsed, Rejection):
        # whatever it held, the dead letter's fields can be written
        for value in (parsed.event_id or "", parsed.detail):
            text, _ = escape(value)
            text.encode("utf-8")
        assert len(parsed.detail) < 1000


def test_valid_poison_events_have_unique_ids_and_two_dates():
    events = [e for _, raw in poison_lines() if not isinstance(e := parse_event(raw), Rejection)]
    assert len({e.event_id for e in events}) == len(events)
    assert {int(e.timestamp) // 86400 for e in events} <= {19675, 19676}


def test_a_lone_surrogate_event_id_is_kept_and_escapable():
    raw = dict(poison_lines())["lone surrogate in event_id"]
    parsed = parse_event(raw)
    assert isinstance(parsed, Rejection) and parsed.event_id == "\ud800"
    assert escape_bytes(parsed.event_id) == (b"\\ud800", True)


def test_escape_leaves_valid_text_alone_and_flags_what_it_changed():
    assert escape("caf\u00e9 \x00 \u202e") == ("caf\u00e9 \x00 \u202e", False)
    assert escape(b"caf\xc3\xa9") == ("caf\u00e9", False)
    assert escape(b"a\xffb") == ("a\\xffb", True)
    assert escape("a\udfffb") == ("a\\udfffb", True)


@given(st.text() | st.binary())
def test_escape_always_encodes(value):
    text, escaped = escape(value)
    text.encode("utf-8")
    if not escaped:
        assert text == (value.decode("utf-8") if isinstance(value, bytes) else value)


def test_the_interpreter_keeps_its_integer_digit_limit():
    import counting  # noqa: F401  (importing the contract changes no process-wide setting)

    assert sys.get_int_max_str_digits() != 0


def test_loads_keeps_over_long_integers_as_their_digits():
    digits = "-" + "7" * 5000
    obj = loads(f'{{"n": {digits}, "m": [1, {digits[1:]}]}}')
    assert obj == {"n": BigInt(digits), "m": [1, BigInt(digits[1:])]}
    assert (
        canonical_size(obj)
        == len(json.dumps({"n": 1, "m": [1, 1]}, separators=(",", ":"))) + 2 * 4999 + 1
    )
    with pytest.raises(ValueError):
        loads('{"n": 1')


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_loads_equals_json_loads(value):
    text = json.dumps(value)
    assert loads(text) == json.loads(text)


@given(st.binary(max_size=300))
def test_nesting_depth_never_raises(data):
    assert nesting_depth(data) >= 0
