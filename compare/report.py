"""Rendering an audit: table (for a terminal), json, jsonl, csv (for tools), html (to look at).

Summary first, then the detail. The JSON shapes are documented in compare/README.md and
versioned by `FORMAT`; fields are only ever added, never renamed or removed, within a version.
"""

from __future__ import annotations

import csv
import json
from typing import IO, Any

from compare.audit import AuditResult
from compare.html import page
from settings.output import csv_row, term

FORMAT = "abacus.compare/1"
FORMATS = ("table", "json", "jsonl", "csv", "html")
CSV_FIELDS = (
    "class",
    "level",
    "company_id",
    "customer_id",
    "statistic_id",
    "resolution",
    "bucket",
    "facet",
    "value",
    "left_count",
    "right_count",
    "truth_count",
    "delta_count",
    "left_uniques",
    "right_uniques",
    "truth_uniques",
    "delta_uniques",
    "deliveries_count",
    "truth_supports",
    "redelivery",
    "defect",
)


def header(result: AuditResult) -> dict[str, Any]:
    """The audit's identity and outcome (the head of every machine-readable format)."""
    r = result.record
    return {
        "format": FORMAT,
        "audit_id": r.audit_id,
        "date": r.date,
        "left": r.left,
        "right": r.right,
        "truth": r.truth,
        "state": r.state,
        "outcome": r.outcome,
        "exit_code": result.exit_code,
        "started_at": r.to_dict()["started_at"],
        "ended_at": r.to_dict()["ended_at"],
        "params": r.params,
        "detail_available": result.has_detail(),
    }


def render(result: AuditResult, fmt: str, out: IO[str], limit: int | None = None) -> None:
    """Write the report of `result` in `fmt` to `out`; `limit` caps the detail rows of the
    human formats (table: 20 by default, html: 1000)."""
    if fmt == "json":
        _json(result, out)
    elif fmt == "jsonl":
        out.write(
            json.dumps(
                {"type": "audit", **header(result), "summary": result.summary}, ensure_ascii=False
            )
            + "\n"
        )
        for record in result.mismatches():
            out.write(json.dumps({"type": "mismatch", **record}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(
            out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for record in result.mismatches():
            writer.writerow(csv_row(record))
    elif fmt == "html":
        out.write(page(result, header(result), CSV_FIELDS, limit if limit is not None else 1000))
    elif fmt == "table":
        _table(result, out, limit if limit is not None else 20)
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def _json(result: AuditResult, out: IO[str]) -> None:
    """One object; the mismatches array is streamed, never built in memory."""
    head = {"audit": header(result), "summary": result.summary}
    text = json.dumps({"format": FORMAT, **head}, ensure_ascii=False, indent=1)
    out.write(text[: text.rindex("}")].rstrip() + ',\n "mismatches": [')
    for i, record in enumerate(result.mismatches()):
        out.write(("," if i else "") + "\n  " + json.dumps(record, ensure_ascii=False))
    out.write("\n ]\n}\n")


def headline(result: AuditResult) -> str:
    """One line: what was compared and how it came out."""
    s = result.summary
    r = result.record
    if not s:
        return f"audit {r.audit_id}: {r.date} {r.left} vs {r.right}: {r.state} ({r.outcome})"
    overflow = (s.get("mirror_overflow") or {}).get("messages")
    return (
        f"audit {r.audit_id}: {r.date} {r.left} vs {r.right} (truth: {r.truth}): "
        f"{r.outcome.upper()}: {s['keys_compared']} keys compared, {s['matched']} matched, "
        f"{s['mismatched']} mismatched, {s['defects']} outside tolerance"
        + (f"; {overflow} mirror overflows on this date" if overflow else "")
    )


def _table(result: AuditResult, out: IO[str], limit: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=max(100, Console().width))
    s = result.summary
    console.print(term(headline(result)))
    if not s:
        return
    overview = Table("measure", "value", title="summary")
    for name in ("keys_compared", "matched", "mismatched", "defects"):
        overview.add_row(name, str(s[name]))
    for kind, n in s["classes"].items():
        overview.add_row(
            term(f"class {kind}" + (" (truth differs)" if kind == "match" else "")), str(n)
        )
    for verdict, n in (s["truth_supports"] or {}).items():
        overview.add_row(term(f"truth supports {verdict}"), str(n))
    for side, n in (s["redeliveries"] or {}).items():
        overview.add_row(term(f"{side} counts redeliveries"), str(n))
    for measure, err in s["errors"].items():
        overview.add_row(f"{measure} error abs max / mean", f"{err['max_abs']} / {err['mean_abs']}")
        overview.add_row(
            f"{measure} error rel max / mean", f"{err['max_rel']:.2%} / {err['mean_rel']:.2%}"
        )
    totals = s["totals"]
    overview.add_row(
        "total count left / right / truth",
        f"{totals['left_count']} / {totals['right_count']} / "
        f"{totals['truth_count'] if totals['truth_count'] is not None else '-'}",
    )
    console.print(overview)
    for name, rows in s["attribution"].items():
        if not rows:
            continue
        table = Table(_SINGULAR[name], "mismatches", "share", "|delta count|", title=f"top {name}")
        for row in rows:
            table.add_row(
                term(row["label"]),
                str(row["mismatches"]),
                f"{row['share']:.1%}",
                str(row["abs_delta_count"]),
            )
        console.print(table)
    detail = Table(
        "class",
        "level",
        "key",
        "left",
        "right",
        "truth",
        "supports",
        "defect",
        title=f"first {limit} mismatches (all: --format jsonl|csv|json)",
    )
    for i, record in enumerate(result.mismatches()):
        if i >= limit:
            break
        detail.add_row(
            term(record["class"]),
            term(record["level"]),
            term(key_text(record)),
            _measures(record, "left"),
            _measures(record, "right"),
            _measures(record, "truth"),
            term(record["truth_supports"] or "-"),
            "yes" if record["defect"] else "no",
        )
    if detail.rows:
        console.print(detail)


_SINGULAR = {"companies": "company", "statistics": "statistic", "hours": "hour"}


def key_text(record: dict[str, Any]) -> str:
    parts = [record["company_id"]]
    if record["level"] == "customer":
        parts.append(record["customer_id"])
    parts += [record["statistic_id"], record["bucket"]]
    if record["level"] == "account" and record["facet"]:
        parts.append(f"{record['facet']}={record['value']}")
    return " ".join(parts)


def _measures(record: dict[str, Any], side: str) -> str:
    count = record.get(f"{side}_count")
    if count is None:
        return "-"
    uniques = record.get(f"{side}_uniques")
    return str(count) if uniques is None else f"{count}/{uniques}u"
