"""Validation of hydrated events (SEMANTICS.md §1): an Event, or a Rejection with its reason.

The checks run in the order of the reasons table; the first that fails decides the reason.
"""

from __future__ import annotations

import json
import re
import sys
import zoneinfo
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import accumulate
from typing import Any

from counting.facets import MAX_FACET_VALUE_CHARS, NonFiniteFloat, facet_value
from counting.model import BigInt, Event, Reason, Rejection

MAX_INPUT_BYTES = 1024 * 1024
MAX_CANONICAL_BYTES = 64 * 1024
MAX_PROPERTIES = 50
MAX_PROPERTY_KEY_CHARS = 64
# Arrays and objects nested deeper than this are not parsed (RFC 8259 §9 lets a parser limit
# nesting): Python's parser recurses, and 1,500 levels (3 KB) would crash it with a
# RecursionError that stops whichever pipeline reads the event. A fixed limit, checked
# before parsing, makes every pipeline reject the same inputs as `not_json`.
MAX_NESTING = 512
TS_MIN_S = 946684800
TS_MAX_S = 4102444800  # exclusive

# field -> maximum length in characters; all required, all strings
ID_FIELDS: dict[str, int] = {
    "event_id": 128,
    "company_id": 64,
    "customer_id": 64,
    "statistic_id": 64,
}
REQUIRED_FIELDS: tuple[str, ...] = (*ID_FIELDS, "timestamp")


def _int_or_big(digits: str) -> int | BigInt:
    limit = sys.get_int_max_str_digits()
    if limit and len(digits) - digits.startswith("-") > limit:
        return BigInt(digits)
    return int(digits)


# Used only after a parse failed on an over-long integer: the hook costs a Python call per
# integer, which the usual path does not pay.
_big_int_decoder = json.JSONDecoder(parse_int=_int_or_big)


def _canonical_default(value: Any) -> Any:
    if type(value) is BigInt:
        # a string of the same encoded length (its quotes make up for two digits)
        return "0" * (len(value.digits) - 2)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The canonical encoding of a parsed input is never more than 5 times the input's size
# (the worst growth is a short float such as `1e15` -> `1000000000000000.0`); inputs below
# this size therefore cannot exceed the canonical limit and skip its (costly) computation.
_CANONICAL_SAFE_INPUT_BYTES = MAX_CANONICAL_BYTES // 5


@lru_cache(maxsize=1)
def known_timezones() -> frozenset[str]:
    """The IANA names this interpreter knows (the system's zoneinfo, or the tzdata package)."""
    return frozenset(zoneinfo.available_timezones())


def canonical_size(event: Any) -> int:
    """UTF-8 size of the event's canonical JSON encoding (the transport-independent size)."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=_canonical_default)
    return len(text.encode("utf-8"))


# The decoder json.loads uses (no hooks), called directly: `json.loads(text)` on a str is
# `scan_once(text, first non-whitespace)` plus a check that only whitespace follows; for the
# usual line (an object, "{" first) that is done here without the wrapper's regexes.
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(text: str) -> Any:
    """`json.loads(text)`, with the same result or exception for every text, except that
    an integer longer than Python's conversion limit becomes a `BigInt` (in time linear
    in its length) instead of raising. Safe for any input: callers bound its size and
    nesting first (`MAX_INPUT_BYTES`, `too_deep`)."""
    try:
        if text[:1] == "{":
            try:
                obj, end = _scan_once(text, 0)
            except Exception:  # json.loads itself raises the very same error
                return json.loads(text)
            if end == len(text) or not text[end:].strip(" \t\n\r"):
                return obj
        return json.loads(text)
    except ValueError as exc:
        if not str(exc).startswith("Exceeds the limit"):
            raise
        return _big_int_decoder.decode(text)


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# opening brackets -> 1, closing -> 255 (-1 as a signed byte)
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings
    do not count); iterative and C-paced (about 50 ms for 1 MiB of brackets), so any
    depth is measured without recursion."""
    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_BRACKET_STEPS)).cast("b")
    return max(0, max(accumulate(steps)))


def too_deep(data: bytes) -> bool:
    """Whether arrays/objects nest deeper than MAX_NESTING (checked before parsing)."""
    # counting brackets is C-fast; the exact depth is measured only when it could be over
    return data.count(b"[") + data.count(b"{") > MAX_NESTING and nesting_depth(data) > MAX_NESTING


def _event_id_of(obj: Any) -> str | None:
    if isinstance(obj, dict):
        event_id = obj.get("event_id")
        if type(event_id) is str and event_id:
            return event_id
    return None


def _reject(reason: Reason, obj: Any, detail: str) -> Rejection:
    return Rejection(reason, _event_id_of(obj), detail)


def read_lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    """The raw events of a JSON Lines stream (a binary file): blank lines carry no event and
    are skipped, line ends are stripped."""
    for line in stream:
        if line.strip():
            yield line.rstrip(b"\r\n")


def parse_event(raw: bytes | str | dict[str, Any]) -> Event | Rejection:
    """Validate one hydrated event as received (bytes or text) or already decoded (dict)."""
    obj: Any
    if isinstance(raw, dict):
        obj = raw
        try:
            if canonical_size(obj) > MAX_CANONICAL_BYTES:
                return _reject(Reason.TOO_LARGE, obj, "canonical encoding is over 64 KiB")
        except (TypeError, ValueError) as exc:
            return _reject(Reason.NOT_JSON, obj, f"not encodable as JSON: {exc}")
        except RecursionError:
            return _reject(Reason.NOT_JSON, obj, "nested too deeply to encode as JSON")
        return validate_object(obj)
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > MAX_INPUT_BYTES:
        return Rejection(Reason.TOO_LARGE, None, f"input is {len(data)} bytes, over 1 MiB")
    if len(data) > MAX_NESTING and too_deep(data):  # a shorter text cannot nest deeper
        return Rejection(
            Reason.NOT_JSON, None, f"arrays/objects nested deeper than {MAX_NESTING} levels"
        )
    try:
        obj = loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Rejection(Reason.NOT_JSON, None, f"not UTF-8 JSON: {exc}")
    except RecursionError:  # only if the caller's own stack is unusually deep
        return Rejection(Reason.NOT_JSON, None, "nested too deeply to parse")
    if not isinstance(obj, dict):
        return Rejection(Reason.NOT_AN_OBJECT, None, f"JSON {type(obj).__name__}, not an object")
    if len(data) > _CANONICAL_SAFE_INPUT_BYTES or b"\\ud" in data or b"\\uD" in data:
        try:
            if canonical_size(obj) > MAX_CANONICAL_BYTES:
                return _reject(Reason.TOO_LARGE, obj, "canonical encoding is over 64 KiB")
        except UnicodeEncodeError:
            return _reject(Reason.NOT_JSON, obj, "a string holds a lone surrogate (not UTF-8)")
    return validate_object(obj)


def validate_object(obj: dict[str, Any]) -> Event | Rejection:
    """Checks from `missing_field` on, in the order of the reasons table."""
    if not obj.keys() >= _REQUIRED:
        missing = next(name for name in REQUIRED_FIELDS if name not in obj)
        return _reject(Reason.MISSING_FIELD, obj, f"missing field {missing!r}")
    event_id, company_id = obj["event_id"], obj["company_id"]
    customer_id, statistic_id = obj["customer_id"], obj["statistic_id"]
    ts = obj["timestamp"]
    tz = obj.get("timezone", "UTC")
    properties = obj.get("properties", _EMPTY)

    if not (
        type(event_id) is str
        and type(company_id) is str
        and type(customer_id) is str
        and type(statistic_id) is str
    ):
        name = next(n for n in ID_FIELDS if type(obj[n]) is not str)
        return _reject(Reason.BAD_TYPE, obj, f"{name} must be a string")
    if type(ts) is not int and type(ts) is not float and type(ts) is not BigInt:
        return _reject(Reason.BAD_TYPE, obj, "timestamp must be a number (not a bool)")
    if type(tz) is not str:
        return _reject(Reason.BAD_TYPE, obj, "timezone must be a string")
    if type(properties) is not dict:
        return _reject(Reason.BAD_TYPE, obj, "properties must be an object")
    facets: list[tuple[str, str]] = []
    for item in properties.items():
        value = item[1]
        kind = type(value)
        # the common cases inline, as facet_value would say (a test holds them equal)
        if kind is str and len(value) <= MAX_FACET_VALUE_CHARS:
            facets.append(item)
        elif kind is bool:
            facets.append((item[0], "true" if value else "false"))
        else:
            try:
                text = facet_value(value)
            except NonFiniteFloat:
                return _reject(
                    Reason.BAD_TYPE, obj, f"property {item[0][:64]!r} is a non-finite float"
                )
            if text is not None:
                facets.append((item[0], text))

    if not (
        0 < len(event_id) <= 128
        and 0 < len(company_id) <= 64
        and 0 < len(customer_id) <= 64
        and 0 < len(statistic_id) <= 64
    ):
        name, limit = next((n, m) for n, m in ID_FIELDS.items() if not 0 < len(obj[n]) <= m)
        return _reject(Reason.BAD_LENGTH, obj, f"{name} must be 1..{limit} characters")
    if not tz:
        return _reject(Reason.BAD_LENGTH, obj, "timezone must not be empty")

    if not (TS_MIN_S <= ts < TS_MAX_S):  # NaN compares False: not finite fails here too
        return _reject(
            Reason.BAD_TIMESTAMP,
            obj,
            f"timestamp {ts!r} is not finite or out of range [{TS_MIN_S}, {TS_MAX_S})",
        )

    if tz not in _TIMEZONES:
        return _reject(Reason.BAD_TIMEZONE, obj, f"unknown time zone {tz[:64]!r}")

    if len(properties) > MAX_PROPERTIES:
        return _reject(Reason.TOO_MANY_PROPERTIES, obj, f"{len(properties)} properties, max 50")

    if properties and ("" in properties or max(map(len, properties)) > MAX_PROPERTY_KEY_CHARS):
        return _reject(Reason.BAD_PROPERTY_KEY, obj, "property keys must be 1..64 characters")

    # tuple.__new__ builds the NamedTuple in C (its own __new__ is Python code)
    return _new(  # type: ignore[no-any-return]
        Event,
        (
            event_id,
            company_id,
            customer_id,
            statistic_id,
            ts,
            tz,
            tuple(facets),
        ),
    )


_REQUIRED = frozenset(REQUIRED_FIELDS)
_new: Any = tuple.__new__
_EMPTY: dict[str, Any] = {}
_TIMEZONES = known_timezones()
