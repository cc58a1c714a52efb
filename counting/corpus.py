"""A fixed, tricky corpus of hydrated events for tests of every pipeline (pure).

Time zones with DST folds and gaps (New York, Berlin, Lord Howe's half-hour shift),
half-hour and 45-minute zones, local months that differ from UTC months, facets of every
kind, redeliveries of the same event_id, heavy customers, and one invalid event for every
rejection reason. `tricky_lines()` is what a producer publishes, one raw event a line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def _ts(iso_utc: str) -> int:
    return int(datetime.fromisoformat(iso_utc).replace(tzinfo=UTC).timestamp())


# (UTC instant, zone): DST folds/gaps and odd offsets, around local midnights and months
_MOMENTS: list[tuple[str, str]] = [
    ("2025-11-02T05:30:00", "America/New_York"),  # 01:30 EDT, first pass of the fold
    ("2025-11-02T06:30:00", "America/New_York"),  # 01:30 EST, repeated hour: same bucket
    ("2025-03-09T06:59:59", "America/New_York"),  # 01:59:59 EST, just before the gap
    ("2025-03-09T07:00:00", "America/New_York"),  # 03:00 EDT, 02:xx is skipped
    ("2025-10-26T00:30:00", "Europe/Berlin"),  # 02:30 CEST
    ("2025-10-26T01:30:00", "Europe/Berlin"),  # 02:30 CET (fold)
    ("2025-03-30T00:59:59", "Europe/Berlin"),  # 01:59:59 CET, before the gap
    ("2025-03-30T01:00:00", "Europe/Berlin"),  # 03:00 CEST
    ("2025-04-05T14:45:00", "Australia/Lord_Howe"),  # 01:45 +11, before the half-hour fold
    ("2025-04-05T15:15:00", "Australia/Lord_Howe"),  # 01:45 +10:30, same local hour
    ("2025-12-31T18:20:00", "Asia/Kolkata"),  # 23:50 local on Dec 31, +05:30
    ("2025-12-31T18:30:00", "Asia/Kolkata"),  # 00:00 local on Jan 1: new year, month, day
    ("2025-06-30T18:14:59", "Asia/Kathmandu"),  # 23:59:59 local, +05:45
    ("2025-06-30T18:15:00", "Asia/Kathmandu"),  # 00:00 local, July
    ("2025-01-31T15:14:00", "Australia/Eucla"),  # 23:59 local, +08:45
    ("2025-02-01T04:30:00", "America/New_York"),  # 23:30 local on Jan 31; UTC says February
    ("2018-12-07T03:32:42", "UTC"),  # the seed post's example
    ("2000-01-01T00:00:00", "UTC"),  # the smallest valid timestamp
]

_PROPERTIES: list[dict[str, Any]] = [
    {"message_id": "MSG123", "ip": "", "browser": "Safari 12.0.1", "type": "open"},
    {"flag": True, "off": False, "n": 3, "big": 12345678901234567890, "f": 12.5},
    {"neg": -7, "tiny": 1e-07, "whole": 2.0, "nothing": None, "list": [1, 2], "obj": {"a": 1}},
    {"s256": "x" * 256, "s257": "y" * 257, "unicode": "café ☕", "emoji": "🎉"},
    {"campaign_name": "holiday sales", "type": "click"},
    {},
]


def tricky_events() -> list[dict[str, Any]]:
    """The valid events (with redeliveries): every moment x a rotation of properties."""
    events: list[dict[str, Any]] = []
    for i, (iso, zone) in enumerate(_MOMENTS):
        for j in range(2):
            events.append(
                {
                    "event_id": f"tricky-{i:02d}-{j}",
                    "company_id": ("COM-A", "COM-B", "COM-ü")[i % 3],
                    # customer 0 is heavy: uniques < count on many keys
                    "customer_id": "CUS-0" if j == 0 else f"CUS-{i % 4 + 1}",
                    "statistic_id": ("opened", "clicked")[(i + j) % 2],
                    "timestamp": _ts(iso) + (0.75 if j else 0),
                    "timezone": zone,
                    "properties": _PROPERTIES[(i + j) % len(_PROPERTIES)],
                    "ignored_field": "not counted",
                }
            )
    events[5]["timezone"] = "UTC"  # explicit UTC beside the default
    del events[7]["timezone"]  # default UTC
    del events[9]["properties"]  # default {}
    # redeliveries: the same event_id again, the first delivery is the event
    events += [dict(events[0]), dict(events[3]), dict(events[3])]
    events.append(dict(events[10], customer_id="CUS-OTHER"))  # same id, other content
    return events


def invalid_lines() -> list[tuple[str, str]]:
    """(raw line, expected reason) for every reason of SEMANTICS.md §1, some twice."""
    ok = {
        "event_id": "bad-0",
        "company_id": "COM-A",
        "customer_id": "CUS-1",
        "statistic_id": "opened",
        "timestamp": 1_700_000_000,
    }

    def variant(n: int, **changes: Any) -> str:
        event = {**ok, "event_id": f"bad-{n:02d}", **changes}
        for name, value in changes.items():
            if value is _DROP:
                del event[name]
        return json.dumps(event)

    huge_props = {f"k{i:02d}": "v" * 1400 for i in range(48)}  # ~67 KiB canonical
    return [
        ('{"event_id": "bad-00", "pad": "' + "x" * (1024 * 1024) + '"}', "too_large"),
        ("{not json", "not_json"),
        ("[1, 2, 3]", "not_an_object"),
        ('"just a string"', "not_an_object"),
        (variant(1, properties=huge_props), "too_large"),
        (variant(2, customer_id=_DROP), "missing_field"),
        (variant(3, timestamp=_DROP, company_id=""), "missing_field"),
        (variant(4, timestamp=True), "bad_type"),
        (variant(5, timestamp="1700000000"), "bad_type"),
        (variant(6, company_id=123), "bad_type"),
        (variant(7, properties=[1]), "bad_type"),
        (variant(8, timezone=5), "bad_type"),
        (variant(9, properties={"x": float("nan")}, company_id=""), "bad_type"),
        (variant(10, company_id=""), "bad_length"),
        (variant(11, customer_id="c" * 65), "bad_length"),
        (variant(12, event_id="e" * 129), "bad_length"),
        (variant(13, timestamp=946684799), "bad_timestamp"),
        (variant(14, timestamp=4102444800), "bad_timestamp"),
        (variant(15, timestamp=float("inf")), "bad_timestamp"),
        (variant(16, timezone="Mars/Olympus_Mons"), "bad_timezone"),
        (variant(17, properties={f"p{i}": i for i in range(51)}), "too_many_properties"),
        (variant(18, properties={"": 1}), "bad_property_key"),
        (variant(19, properties={"k" * 65: 1}), "bad_property_key"),
        # valid JSON, but nested past the parser's limit (3 KB): rejected, never a crash
        (
            variant(20)[:-1] + ', "properties": {"deep": ' + "[" * 1500 + "]" * 1500 + "}}",
            "not_json",
        ),
    ]


class _Drop:
    def __repr__(self) -> str:
        return "<drop>"


_DROP: Any = _Drop()


def tricky_lines() -> list[str]:
    """The corpus as a producer publishes it: valid events and invalid lines interleaved."""
    valid = [json.dumps(e, ensure_ascii=False) for e in tricky_events()]
    bad = [line for line, _ in invalid_lines()]
    lines: list[str] = []
    for i, line in enumerate(valid):
        lines.append(line)
        if i % 3 == 2 and bad:
            lines.append(bad.pop(0))
    return lines + bad


def _poison_event(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"poison-{n:02d}",
        "company_id": "COM-P",
        "customer_id": f"CUS-P{n % 4}",
        "statistic_id": "poisoned",
        "timestamp": 1_700_000_000 + 7 * n,
        **fields,
    }


def _json(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def _json_ascii(event: dict[str, Any]) -> bytes:
    """JSON with \\u escapes: the only way a lone surrogate travels in valid UTF-8 JSON."""
    return json.dumps(event, ensure_ascii=True).encode("ascii")


def poison_lines() -> list[tuple[str, bytes]]:
    """(name, raw event bytes) that a hostile or broken publisher may send.

    Each is counted exactly when the contract says it is valid, or dead-lettered with its
    reason (`parse_event(raw)` says which), and never stops a pipeline: lone surrogates in
    every field, property key and value; invalid UTF-8; NULs; bidi controls; terminal and
    rich markup; spreadsheet formulas; huge ids and numbers; deep nesting. Valid ones all
    fall on 2023-11-14 and 2023-11-15 (UTC), company COM-P, statistic "poisoned".
    """
    big = "9" * 5000  # over Python's integer-conversion limit (4,300 digits)
    lines: list[tuple[str, bytes]] = []
    lone = "\ud800"
    for n, where in enumerate(
        ("event_id", "company_id", "customer_id", "statistic_id", "timezone"), start=1
    ):
        lines.append((f"lone surrogate in {where}", _json_ascii(_poison_event(n, **{where: lone}))))
    lines += [
        ("lone low surrogate in event_id", _json_ascii(_poison_event(6, event_id="x\udfff"))),
        ("lone surrogate in a property key", _json_ascii(_poison_event(7, properties={lone: 1}))),
        (
            "lone surrogate in a property value",
            _json_ascii(_poison_event(8, properties={"k": "a" + lone})),
        ),
        ("invalid UTF-8 byte", _json(_poison_event(9)).replace(b"COM-P", b"COM-\xff")),
        ("UTF-8-encoded surrogate", _json(_poison_event(10)).replace(b"COM-P", b"\xed\xa0\x80")),
        ("surrogate pair (valid)", _json_ascii(_poison_event(11, customer_id="\U0001f600"))),
        (
            "NUL in ids and values (valid)",
            _json(_poison_event(12, customer_id="a\x00b", properties={"n\x00": "v\x00"})),
        ),
        (
            "bidi controls (valid)",
            _json(
                _poison_event(13, customer_id="\u202egnp.exe", properties={"b": "\u2067x\u2069"})
            ),
        ),
        (
            "rich markup (valid)",
            _json(_poison_event(14, customer_id="[/bold]", properties={"m": "[link=https://x]y"})),
        ),
        ("terminal escape (valid)", _json(_poison_event(15, customer_id="\x1b[31mred\x1b]8;;"))),
        (
            "spreadsheet formula (valid)",
            _json(_poison_event(16, customer_id="=cmd|' /C calc'!A0", properties={"f": "+1-2"})),
        ),
        (
            "event_id of 128 four-byte characters (valid)",
            _json(_poison_event(17, event_id="\U0001f4a9" * 128)),
        ),
        ("event_id of 129 characters", _json(_poison_event(18, event_id="e" * 129))),
        ("event_id of 2 MiB", _json(_poison_event(19, event_id="e" * (2 * 1024 * 1024)))),
        (
            "a 5,000-digit integer property (valid)",
            _json(_poison_event(20)).replace(
                b'"timestamp"', b'"properties": {"n": ' + big.encode() + b'}, "timestamp"'
            ),
        ),
        ("a 5,000-digit timestamp", _json(_poison_event(21)).replace(b"1700000147", big.encode())),
        (
            "a 1,000,000-digit integer",
            _json(_poison_event(22)).replace(
                b'"timestamp"', b'"n": ' + b"7" * 1_000_000 + b', "timestamp"'
            ),
        ),
        ("4 MiB of digits", b'{"event_id": "poison-23", "n": ' + b"1" * (4 * 1024 * 1024) + b"}"),
        ("1e400 timestamp", _json(_poison_event(24)).replace(b"1700000168", b"1e400")),
        (
            "NaN property",
            _json(_poison_event(25)).replace(
                b'"timestamp"', b'"properties": {"x": NaN}, "timestamp"'
            ),
        ),
        (
            "deep nesting in a property (100,000 levels)",
            _json(_poison_event(26)).replace(
                b'"timestamp"', b'"p": ' + b"[" * 100_000 + b"]" * 100_000 + b', "timestamp"'
            ),
        ),
        (
            "nesting of 500 levels (valid)",
            _json(_poison_event(27)).replace(
                b'"timestamp"',
                b'"properties": {"d": ' + b"[" * 500 + b"]" * 500 + b'}, "timestamp"',
            ),
        ),
        (
            "duplicate keys: the last wins (valid)",
            _json(_poison_event(28)).replace(
                b'{"event_id": "poison-28"', b'{"event_id": "dup-first", "event_id": "poison-28"'
            ),
        ),
        ("byte order mark", b"\xef\xbb\xbf" + _json(_poison_event(29))),
        ("empty", b""),
        ("whitespace", b" \n\t "),
        ("null", b"null"),
        ("trailing garbage", _json(_poison_event(30)) + b" x"),
        ("path in timezone", _json(_poison_event(31, timezone="../../../etc/passwd"))),
        (
            "CQL in ids (valid)",
            _json(_poison_event(32, company_id="COM-P'; DROP KEYSPACE abacus_ops; --")),
        ),
        ("HTML in ids (valid)", _json(_poison_event(33, customer_id="<script>alert(1)</script>"))),
        (
            "50 properties with long keys (valid)",
            _json(_poison_event(34, properties={f"{i:02d}" + "k" * 62: i for i in range(50)})),
        ),
    ]
    return lines
