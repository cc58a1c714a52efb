"""The counts exchange format (SEMANTICS.md §6): one counter a JSON line.

Every command that prints counts (recount, dump, compare's detail) writes these lines, and
compare reads them back, so a store can be diffed with ordinary tools too.
"""

from __future__ import annotations

import json
from typing import Any

from counting.model import AccountCount, AccountKey, CustomerCount, CustomerKey

Counted = AccountCount | CustomerCount
Key = AccountKey | CustomerKey

# A record's fields, in the documented order: "level", the key's fields (in the order of the
# key type's fields), then the measures ("count", and at account level "uniques").
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "account": AccountKey._fields,
    "customer": CustomerKey._fields,
}


def key_record(key: Key) -> dict[str, Any]:
    """The level and key fields of a key's record, in the documented order (also the start
    of compare's mismatch records after their class)."""
    level = "account" if isinstance(key, AccountKey) else "customer"
    record: dict[str, Any] = {"level": level}
    record.update(zip(KEY_FIELDS[level], key, strict=True))
    return record


def key_of_record(record: dict[str, Any]) -> Key:
    """The key of an exchange (or mismatch) record; raises KeyError for a missing field,
    ValueError for an unknown level."""
    level = record["level"]
    if level == "account":
        return AccountKey._make(record[n] for n in KEY_FIELDS[level])
    if level == "customer":
        return CustomerKey._make(record[n] for n in KEY_FIELDS[level])
    raise ValueError(f"counter record has unknown level {level!r}")


def to_record(counted: Counted) -> dict[str, Any]:
    """The exchange record of a counter, fields in the documented order."""
    record = key_record(counted.key)
    record["count"] = counted.count
    if isinstance(counted, AccountCount):
        record["uniques"] = counted.uniques
    return record


def to_line(counted: Counted) -> str:
    """One JSON line (no newline), non-ASCII kept as is."""
    return json.dumps(to_record(counted), ensure_ascii=False)


def from_record(record: dict[str, Any]) -> Counted:
    """Parse an exchange record back; raises ValueError naming what is wrong."""
    try:
        key = key_of_record(record)
        if isinstance(key, AccountKey):
            return AccountCount(key, int(record["count"]), int(record["uniques"]))
        return CustomerCount(key, int(record["count"]))
    except KeyError as exc:
        raise ValueError(f"counter record lacks field {exc.args[0]!r}") from None


def from_line(line: str | bytes) -> Counted:
    return from_record(json.loads(line))
