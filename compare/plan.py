"""The plan of an audit: its units, selected and sorted, kept in `<spool>/plan.json`.

The stores' units (their per-date indexes) are planned first, before the first read; the
units only the truth has come at the end, once the truth is known (it is recounted while
the stores are read). `plan.json` says whether it is `complete` (those units appended): a
resumed audit keeps the stores' part as it was and, when the truth had not arrived, appends
the truth's units then, so it reads the same units in the same order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compare.diff import Unit

LEVELS = ("account", "customer")


def write_json(path: Path, data: Any) -> None:
    """Atomically: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def unit_order(unit: Unit) -> tuple[int, tuple[str, ...]]:
    return (LEVELS.index(unit[0]), unit[1])


def select(
    units: Iterable[Unit],
    levels: Iterable[str],
    companies: Iterable[str],
    statistics: Iterable[str],
) -> list[Unit]:
    """The units an audit covers (its level, companies and statistics), in plan order."""
    levels, companies, statistics = set(levels), set(companies), set(statistics)
    return sorted(
        (
            u
            for u in units
            if u[0] in levels
            and (not companies or u[1][0] in companies)
            and (not statistics or u[1][-1] in statistics)
        ),
        key=unit_order,
    )


@dataclass
class Plan:
    """The units of an audit in the order they are read; `complete` once the truth's own
    units are appended (or when there is no truth)."""

    units: list[Unit]
    complete: bool

    @classmethod
    def load(cls, path: Path) -> Plan | None:
        if not path.is_file():
            return None
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, list):  # written before the truth was recounted apart
            data = {"units": data, "complete": True}
        return cls([(level, tuple(ids)) for level, ids in data["units"]], data["complete"])

    def save(self, path: Path) -> None:
        write_json(
            path,
            {"units": [[level, list(ids)] for level, ids in self.units], "complete": self.complete},
        )

    def extend(self, extra: list[Unit], path: Path) -> None:
        """Append the truth's own units (from `extra_units`) and record the plan complete."""
        self.units = self.units + extra
        self.complete = True
        self.save(path)


def extra_units(
    plan: list[Unit],
    truth_units: Iterable[Unit],
    levels: Iterable[str],
    companies: Iterable[str],
    statistics: Iterable[str],
) -> list[Unit]:
    """The truth's units of the date the plan lacks, selected, in plan order."""
    planned = set(plan)
    return select((u for u in truth_units if u not in planned), levels, companies, statistics)
