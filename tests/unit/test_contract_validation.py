"""SEMANTICS.md §1: every rejection reason, and the order between them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from counting import Event, Reason, Rejection, parse_event
from counting.corpus import invalid_lines
from counting.events import MAX_NESTING, nesting_depth

OK = {
    "event_id": "e-1",
    "company_id": "COM123",
    "customer_id": "CUS123",
    "statistic_id": "STA123",
    "timestamp": 1544153562,
}


def reason_of(raw: object) -> str | None:
    result = parse_event(raw)  # type: ignore[arg-type]
    return result.reason.value if isinstance(result, Rejection) else None


def with_(**changes: object) -> dict[str, object]:
    event = {**OK, **changes}
    return {k: v for k, v in event.items() if v is not DROP}


DROP = object()

CASES = [
    # (description, raw input, expected reason or None when valid)
    ("minimal valid event", json.dumps(OK), None),
    ("float timestamp", json.dumps(with_(timestamp=1544153562.5)), None),
    ("smallest timestamp", json.dumps(with_(timestamp=946684800)), None),
    ("largest timestamp", json.dumps(with_(timestamp=4102444799.999)), None),
    ("other top-level fields ignored", json.dumps(with_(extra={"x": 1}, ip=None)), None),
    ("event_id of 128 chars", json.dumps(with_(event_id="e" * 128)), None),
    (
        "ids of 64 chars",
        json.dumps(with_(company_id="c" * 64, customer_id="u" * 64, statistic_id="s" * 64)),
        None,
    ),
    ("50 properties", json.dumps(with_(properties={f"p{i}": i for i in range(50)})), None),
    ("property key of 64 chars", json.dumps(with_(properties={"k" * 64: 1})), None),
    ("non-ASCII ids count characters", json.dumps(with_(company_id="é" * 64)), None),
    ("raw over 1 MiB", b'{"a":"' + b" " * (1024 * 1024) + b'"}', "too_large"),
    ("raw over 1 MiB, not even JSON", b"x" * (1024 * 1024 + 1), "too_large"),
    ("not UTF-8", b'{"event_id": "\xff"}', "not_json"),
    ("UTF-16 is not UTF-8", json.dumps(OK).encode("utf-16"), "not_json"),
    ("truncated JSON", json.dumps(OK)[:-1], "not_json"),
    ("empty input", b"", "not_json"),
    ("trailing garbage", json.dumps(OK) + " x", "not_json"),
    ("a list", "[]", "not_an_object"),
    ("null", "null", "not_an_object"),
    ("a number", "3", "not_an_object"),
    (
        "canonical over 64 KiB",
        json.dumps(with_(properties={f"k{i}": "v" * 1400 for i in range(48)})),
        "too_large",
    ),
    (
        "whitespace padding does not count in the canonical size",
        json.dumps(OK, indent=40000 // 7),
        None,
    ),
    ("missing customer_id", json.dumps(with_(customer_id=DROP)), "missing_field"),
    ("missing timestamp", json.dumps(with_(timestamp=DROP)), "missing_field"),
    ("missing event_id", json.dumps(with_(event_id=DROP)), "missing_field"),
    ("null is present, so a bad type", json.dumps(with_(company_id=None)), "bad_type"),
    ("bool timestamp", json.dumps(with_(timestamp=True)), "bad_type"),
    ("string timestamp", json.dumps(with_(timestamp="1544153562")), "bad_type"),
    ("numeric id", json.dumps(with_(event_id=7)), "bad_type"),
    ("properties a list", json.dumps(with_(properties=[])), "bad_type"),
    ("properties null", json.dumps(with_(properties=None)), "bad_type"),
    ("timezone a number", json.dumps(with_(timezone=0)), "bad_type"),
    ("NaN property", json.dumps(with_(properties={"x": float("nan")})), "bad_type"),
    ("-Infinity property", json.dumps(with_(properties={"x": float("-inf")})), "bad_type"),
    (
        "1e999 property overflows to infinity",
        json.dumps(with_()).replace('"timestamp"', '"properties": {"x": 1e999}, "timestamp"'),
        "bad_type",
    ),
    ("empty company_id", json.dumps(with_(company_id="")), "bad_length"),
    ("event_id of 129 chars", json.dumps(with_(event_id="e" * 129)), "bad_length"),
    ("statistic_id of 65 chars", json.dumps(with_(statistic_id="s" * 65)), "bad_length"),
    ("empty timezone", json.dumps(with_(timezone="")), "bad_length"),
    ("timestamp before 2000", json.dumps(with_(timestamp=946684799.9)), "bad_timestamp"),
    ("timestamp at 2100", json.dumps(with_(timestamp=4102444800)), "bad_timestamp"),
    ("NaN timestamp", json.dumps(with_(timestamp=float("nan"))), "bad_timestamp"),
    ("Infinity timestamp", json.dumps(with_(timestamp=float("inf"))), "bad_timestamp"),
    ("unknown zone", json.dumps(with_(timezone="Mars/Base")), "bad_timezone"),
    ("zone names are case-sensitive", json.dumps(with_(timezone="utc")), "bad_timezone"),
    ("a path is no zone", json.dumps(with_(timezone="../../etc/passwd")), "bad_timezone"),
    (
        "51 properties",
        json.dumps(with_(properties={f"p{i}": None for i in range(51)})),
        "too_many_properties",
    ),
    ("empty property key", json.dumps(with_(properties={"": "x"})), "bad_property_key"),
    ("property key of 65 chars", json.dumps(with_(properties={"k" * 65: "x"})), "bad_property_key"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reason(raw: object, expected: str | None) -> None:
    assert reason_of(raw) == expected


ORDER = [
    # two faults at once: the earlier reason in the table wins
    ("not_an_object before too_large (canonical)", "[" + '"x",' * 30000 + '"x"]', "not_an_object"),
    (
        "too_large before missing_field",
        json.dumps({"properties": {f"k{i}": "v" * 1400 for i in range(48)}}),
        "too_large",
    ),
    (
        "missing_field before bad_type",
        json.dumps(with_(customer_id=DROP, timestamp="x")),
        "missing_field",
    ),
    ("bad_type before bad_length", json.dumps(with_(company_id="", timestamp=False)), "bad_type"),
    (
        "bad_type (property) before bad_length",
        json.dumps(with_(event_id="", properties={"x": float("nan")})),
        "bad_type",
    ),
    (
        "bad_length before bad_timestamp",
        json.dumps(with_(company_id="", timestamp=5)),
        "bad_length",
    ),
    (
        "bad_timestamp before bad_timezone",
        json.dumps(with_(timestamp=5, timezone="X/Y")),
        "bad_timestamp",
    ),
    (
        "bad_timezone before too_many_properties",
        json.dumps(with_(timezone="X/Y", properties={f"p{i}": 1 for i in range(60)})),
        "bad_timezone",
    ),
    (
        "too_many_properties before bad_property_key",
        json.dumps(with_(properties={"": 1, **{f"p{i}": 1 for i in range(60)}})),
        "too_many_properties",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in ORDER], ids=[c[0] for c in ORDER])
def test_reason_order(raw: str, expected: str) -> None:
    assert reason_of(raw) == expected


def test_reasons_table_order_is_the_enum_order() -> None:
    assert [r.value for r in Reason] == [
        "too_large",
        "not_json",
        "not_an_object",
        "missing_field",
        "bad_type",
        "bad_length",
        "bad_timestamp",
        "bad_timezone",
        "too_many_properties",
        "bad_property_key",
    ]


def test_corpus_invalid_lines_have_their_reasons() -> None:
    for line, reason in invalid_lines():
        assert reason_of(line) == reason, line[:100]


def test_rejection_carries_event_id_where_present() -> None:
    rejected = parse_event(json.dumps(with_(event_id="abc", timezone="Nowhere/Land")))
    assert isinstance(rejected, Rejection)
    assert rejected.event_id == "abc"
    assert rejected.detail
    unparsable = parse_event(b"{oops")
    assert isinstance(unparsable, Rejection) and unparsable.event_id is None


def test_bytes_text_and_dict_inputs_agree() -> None:
    raw = json.dumps(with_(timezone="Asia/Kolkata", properties={"a": 1.5, "b": [1]}))
    results = {parse_event(raw), parse_event(raw.encode()), parse_event(json.loads(raw))}
    assert len(results) == 1
    (event,) = results
    assert isinstance(event, Event) and event.facets == (("a", "1.5"),)


def test_huge_integer_property_is_a_facet_of_its_digits() -> None:
    digits = "9" * 5000
    raw = json.dumps(OK)[:-1] + ', "properties": {"n": ' + digits + "}}"
    event = parse_event(raw)
    assert isinstance(event, Event)
    assert event.facets == (("n", digits),)


def test_lone_surrogate_is_not_utf8() -> None:
    raw = json.dumps(with_(company_id="\ud800"))  # json.dumps escapes it as \\ud800
    assert reason_of(raw) == "not_json"


# -- nesting: a fixed parser limit, never a RecursionError ----------------------------------


def _nested(depth: int) -> str:
    """A valid event whose one property holds arrays nested so that the whole text is
    `depth` levels deep (the event object itself is level 1, properties level 2)."""
    inner = depth - 2
    return (
        '{"event_id":"deep","company_id":"c","customer_id":"u","statistic_id":"s",'
        '"timestamp":1764547200,"properties":{"a":' + "[" * inner + "]" * inner + "}}"
    )


@pytest.mark.parametrize(
    ("depth", "reason"),
    [(MAX_NESTING, None), (MAX_NESTING + 1, "not_json"), (1500, "not_json"), (200_000, "not_json")],
)
def test_nesting_limit(depth: int, reason: str | None) -> None:
    line = _nested(depth)
    assert nesting_depth(line.encode()) == depth
    result = parse_event(line)
    if reason is None:
        assert isinstance(result, Event) and result.facets == ()  # a list is not a facet
    else:
        assert isinstance(result, Rejection) and result.reason.value == reason
        assert "nested" in result.detail


def test_deep_top_level_array_is_not_json_before_not_an_object() -> None:
    result = parse_event("[" * 5000 + "]" * 5000)
    assert isinstance(result, Rejection) and result.reason.value == "not_json"


def test_deep_dict_input_is_rejected_not_raised() -> None:
    value: list[object] = []
    for _ in range(5000):
        value = [value]
    event = {
        "event_id": "d",
        "company_id": "c",
        "customer_id": "u",
        "statistic_id": "s",
        "timestamp": 1764547200,
        "properties": {"a": value},
    }
    result = parse_event(event)
    assert isinstance(result, Rejection) and result.reason.value == "not_json"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=3), children, max_size=3)
    ),
    max_leaves=20,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(_json_values)
def test_nesting_depth_ignores_brackets_in_strings(value: object) -> None:
    assert nesting_depth(json.dumps(value).encode()) == _depth(value)
