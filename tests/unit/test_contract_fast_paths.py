"""The recount's fast paths agree with the plain definitions they shortcut: the JSON decoder
called directly with `json.loads`, the inline facet texts with `facet_value`, the cached
15-minute blocks with `bucket_labels`, the hour-only counters with the naive fan-out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from counting import Event, Recount, facets_of
from counting.corpus import tricky_lines
from counting.events import loads, validate_object
from tests.unit.test_contract_counting import naive_counts


def outcome(decode: Any, text: str) -> tuple[str, ...]:
    """What decoding gives: the value (repr tells -0.0, nan and int from float apart) or
    the exception, type and message."""
    try:
        value = decode(text)
    except Exception as exc:  # the exception itself is the outcome
        return ("raised", type(exc).__name__, str(exc))
    return ("value", type(value).__name__, repr(value))


EDGE_TEXTS = [
    '{"a": 1}',
    '{"a": 1}\n',
    '{"a": 1}\r\n',
    '{"a": 1} \t\n\r ',
    '{"a": 1}\x0b',
    '{"a": 1}\u00a0',
    '{"a": 1} x',
    '{"a": 1}{"b": 2}',
    '{"a": 1}\n\n',
    ' {"a": 1}',
    '\ufeff{"a": 1}',
    "{",
    '{"a": }',
    '{"a": x}',
    '{"a": 1,}',
    "{}",
    "{}\n",
    "[]",
    "1",
    "",
    '{"n": 123456789012345678901234567890123456789}',
    '{"n": -0}',
    '{"n": -0.0}',
    '{"n": 1e400}',
    '{"n": -1e400}',
    '{"n": NaN}',
    '{"n": Infinity}',
    '{"n": -Infinity}',
    '{"n": nan}',
    '{"s": "\\ud800"}',
    '{"s": "\\udc00\\ud800"}',
    '{"s": "\\ud83d\\ude00"}',
    '{"a": 1, "a": 2}',
    '{"a": {"b": 1}, "a": [1]}',
    '{"a": "\\u0000"}',
    '{"a": "\t"}',
    '{"a": ' + "[" * 100 + "]" * 100 + "}",
    '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"a": ' + '{"b": ' * 3000 + "1" + "}" * 3000 + "}",
    '{"a": 01}',
    '{"a": 1.}',
    '{"a": .5}',
    '{"a": 1e5}',
    '{"a": 1E-5}',
    '{"a": true, "b": false, "c": null}',
    '{"a": tru}',
    '{"a": "unterminated}',
    '{"a": "x"}}',
    '{"a": "x"}]',
]


def test_loads_equals_json_loads_on_edge_texts() -> None:
    for text in EDGE_TEXTS:
        assert outcome(loads, text) == outcome(json.loads, text), text[:60]


def test_loads_equals_json_loads_on_the_tricky_corpus() -> None:
    for line in tricky_lines():
        text = line if isinstance(line, str) else line.decode("utf-8", "surrogatepass")
        for variant in (text, text + "\n", text + " x", text[:-1], text[1:]):
            assert outcome(loads, variant) == outcome(json.loads, variant), variant[:60]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    st.sampled_from(["", "\n", " ", "\r\n", " ,", "}", "\x0b", "x"]),
    st.booleans(),
    st.integers(min_value=0, max_value=40),
)
def test_loads_equals_json_loads(
    obj: dict[str, Any], tail: str, ascii_only: bool, cut: int
) -> None:
    text = json.dumps(obj, ensure_ascii=ascii_only)
    for variant in (
        text,
        text + tail,
        text[: max(1, len(text) - cut)],
        text.replace(", ", ", " + tail, 1),
    ):
        assert outcome(loads, variant) == outcome(json.loads, variant)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=8))
def test_event_facets_are_facets_of_its_properties(properties: dict[str, Any]) -> None:
    event = {
        "event_id": "e",
        "company_id": "c",
        "customer_id": "u",
        "statistic_id": "s",
        "timestamp": 1544153562,
        "properties": properties,
    }
    try:
        expected: object = facets_of(properties)
    except ValueError:
        expected = "bad_type"
    parsed = validate_object(event)
    got = parsed.facets if isinstance(parsed, Event) else parsed.reason.value
    assert got == expected


def counted(
    lines: list[str],
) -> tuple[dict[tuple[str, ...], tuple[int, int]], dict[tuple[str, ...], int]]:
    result = Recount()
    for line in lines:
        result.add_raw(line)
    account = [(c.key, (c.count, c.uniques)) for c in result.account()]
    customer = [(c.key, c.count) for c in result.customer()]
    assert len(account) == len(dict(account)) and len(customer) == len(dict(customer))
    return dict(account), dict(customer)


# zones whose transitions are not on the hour, or fall inside a 15-minute block
_ZONES = (
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Australia/Eucla",
    "Europe/Berlin",
    "America/St_Johns",
    "Pacific/Chatham",
    "UTC",
)
_DST_DAYS = (
    "2025-11-02",
    "2025-04-06",
    "2025-03-09",
    "2025-10-26",
    "2025-03-30",
    "2025-10-05",
    "2025-09-28",
    "2025-04-05",
)


def _day_start(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_DST_DAYS),
            st.integers(-86_400, 2 * 86_400),
            st.sampled_from(_ZONES),
            st.integers(0, 3),
            st.integers(0, 5),
            st.sampled_from([0.0, 0.25, 0.999]),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_recount_across_transitions_equals_the_naive_fan_out(
    picks: list[tuple[str, int, str, int, int, float]],
) -> None:
    lines = []
    for i, (day, offset_s, zone, customer, facet, frac) in enumerate(picks):
        lines.append(
            json.dumps(
                {
                    "event_id": f"e{i % 50}",
                    "company_id": f"C{i % 2}",
                    "customer_id": f"U{customer}",
                    "statistic_id": "S",
                    "timestamp": _day_start(day) + offset_s + frac,
                    "timezone": zone,
                    "properties": {"f": facet, "g": facet % 2 == 0},
                }
            )
        )
    assert counted(lines) == naive_counts(lines)


def test_recount_of_the_tricky_corpus_twice_in_a_row_equals_the_naive_fan_out() -> None:
    lines = tricky_lines() * 2
    assert counted(lines) == naive_counts(lines)
