"""The summary of an audit, built from its mismatch records and tally alone (pure).

Because it needs nothing else, the summary of a resumed audit is the same as that of an
uninterrupted one, and `abacus audits show` can rebuild it from a stored detail file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from compare.diff import CLASSES, VERDICTS, Tally


class _Error:
    """Absolute and relative error of one measure, over the keys where the stores differ."""

    __slots__ = ("max_abs", "max_rel", "n", "sum_abs", "sum_rel")

    def __init__(self) -> None:
        self.n, self.sum_abs, self.sum_rel, self.max_abs, self.max_rel = 0, 0, 0.0, 0, 0.0

    def add(self, left: int, right: int) -> None:
        delta = abs(right - left)
        rel = delta / max(abs(left), abs(right)) if delta else 0.0
        self.n += 1
        self.sum_abs += delta
        self.sum_rel += rel
        self.max_abs = max(self.max_abs, delta)
        self.max_rel = max(self.max_rel, rel)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "max_abs": self.max_abs,
            "mean_abs": _round(self.sum_abs / self.n if self.n else 0),
            "sum_abs": self.sum_abs,
            "max_rel": _round(self.max_rel),
            "mean_rel": _round(self.sum_rel / self.n if self.n else 0.0),
        }


def _round(x: float) -> float:
    return round(x, 6)


class Summary:
    """Accumulates records; `to_dict` is the documented summary (compare/README.md)."""

    def __init__(self, has_truth: bool, top: int = 10) -> None:
        self.has_truth, self.top = has_truth, top
        self.records = self.defects = 0
        self.classes: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.redeliveries: Counter[str] = Counter()
        self.levels: Counter[str] = Counter()
        self.errors = {"count": _Error(), "uniques": _Error()}
        self.by: dict[str, Counter[str]] = {
            "company_id": Counter(),
            "statistic_id": Counter(),
            "hour": Counter(),
        }
        self.delta_by: dict[str, Counter[str]] = {k: Counter() for k in self.by}
        self.hours = {"left": [0] * 24, "right": [0] * 24}

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        self.defects += bool(record["defect"])
        kind = record["class"]
        self.classes[kind] += 1
        self.levels[record["level"]] += 1
        if record["truth_supports"] is not None:
            self.verdicts[record["truth_supports"]] += 1
        if record["redelivery"] is not None:
            self.redeliveries[record["redelivery"]] += 1
        left_c, right_c = record["left_count"] or 0, record["right_count"] or 0
        if kind != "match":
            self.errors["count"].add(left_c, right_c)
            if record["level"] == "account":
                self.errors["uniques"].add(
                    record["left_uniques"] or 0, record["right_uniques"] or 0
                )
        hour = record["bucket"] if record["resolution"] == "hour" else None
        delta = (
            abs(right_c - left_c) if kind != "match" else abs((record["truth_count"] or 0) - left_c)
        )
        for name, label in (
            ("company_id", record["company_id"]),
            ("statistic_id", record["statistic_id"]),
            ("hour", hour),
        ):
            if label is not None:
                self.by[name][label] += 1
                self.delta_by[name][label] += delta
        if hour is not None:
            hh = int(hour[11:13])
            left_off, right_off = self._sides_off(record)
            self.hours["left"][hh] += left_off
            self.hours["right"][hh] += right_off

    def _sides_off(self, record: dict[str, Any]) -> tuple[bool, bool]:
        """Which side a record counts against in the hour chart: with a truth, each side
        that differs from it; without, the side with the larger value."""
        measures = ["count", "uniques"] if record["level"] == "account" else ["count"]

        def values(side: str) -> tuple[int, ...]:
            return tuple(record[f"{side}_{m}"] or 0 for m in measures)

        left, right = values("left"), values("right")
        if self.has_truth:
            truth = values("truth")
            return left != truth, right != truth
        return left > right, right > left

    def to_dict(self, tally: Tally) -> dict[str, Any]:
        attribution = {
            name: [
                {
                    "label": label,
                    "mismatches": n,
                    "abs_delta_count": self.delta_by[name][label],
                    "share": _round(n / self.records),
                }
                for label, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top]
            ]
            for name, counter in self.by.items()
        }
        chart_meaning = (
            "records where the side differs from the truth"
            if self.has_truth
            else "records where the side has the larger value"
        )
        return {
            "keys_compared": tally.compared,
            "matched": tally.matched,
            "mismatched": self.records,
            "defects": self.defects,
            "classes": {c: self.classes[c] for c in CLASSES},
            "levels": {lv: self.levels[lv] for lv in ("account", "customer")},
            "truth_supports": ({v: self.verdicts[v] for v in VERDICTS} if self.has_truth else None),
            "redeliveries": (
                {s: self.redeliveries[s] for s in ("left", "right")} if self.has_truth else None
            ),
            "errors": {m: e.to_dict() for m, e in self.errors.items()},
            "totals": {
                "left_count": tally.left_total,
                "right_count": tally.right_total,
                "truth_count": tally.truth_total if self.has_truth else None,
            },
            "attribution": {
                "companies": attribution["company_id"],
                "statistics": attribution["statistic_id"],
                "hours": attribution["hour"],
            },
            "hour_chart": {
                "meaning": chart_meaning,
                "hours": [f"{h:02d}" for h in range(24)],
                "left": self.hours["left"],
                "right": self.hours["right"],
            },
        }
