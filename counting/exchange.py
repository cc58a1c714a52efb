"""The counts exchange format (SEMANTICS.md §6): one counter a JSON line.

Every command that prints counts (recount, dump, compare's detail) writes these lines, and
compare reads them back, so a store can be diffed with ordinary tools too.
"""

from __future__ import annotations

import json
from typing import Any

from counting.model import AccountCount, AccountKey, CustomerCount, CustomerKey

Counted = AccountCount | CustomerCount


def to_record(counted: Counted) -> dict[str, Any]:
    """The exchange record of a counter, fields in the documented order."""
    if isinstance(counted, AccountCount):
        k = counted.key
        return {
            "level": "account",
            "company_id": k.company_id,
            "statistic_id": k.statistic_id,
            "resolution": k.resolution,
            "bucket": k.bucket,
            "facet": k.facet,
            "value": k.value,
            "count": counted.count,
            "uniques": counted.uniques,
        }
    c = counted.key
    return {
        "level": "customer",
        "company_id": c.company_id,
        "customer_id": c.customer_id,
        "statistic_id": c.statistic_id,
        "resolution": c.resolution,
        "bucket": c.bucket,
        "count": counted.count,
    }


def to_line(counted: Counted) -> str:
    """One JSON line (no newline), non-ASCII kept as is."""
    return json.dumps(to_record(counted), ensure_ascii=False)


def from_record(record: dict[str, Any]) -> Counted:
    """Parse an exchange record back; raises ValueError naming what is wrong."""
    try:
        level = record["level"]
        if level == "account":
            key = AccountKey(
                record["company_id"],
                record["statistic_id"],
                record["resolution"],
                record["bucket"],
                record["facet"],
                record["value"],
            )
            return AccountCount(key, int(record["count"]), int(record["uniques"]))
        if level == "customer":
            ckey = CustomerKey(
                record["company_id"],
                record["customer_id"],
                record["statistic_id"],
                record["resolution"],
                record["bucket"],
            )
            return CustomerCount(ckey, int(record["count"]))
    except KeyError as exc:
        raise ValueError(f"counter record lacks field {exc.args[0]!r}") from None
    raise ValueError(f"counter record has unknown level {record.get('level')!r}")


def from_line(line: str | bytes) -> Counted:
    return from_record(json.loads(line))
