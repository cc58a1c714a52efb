"""The HTML report: one self-contained page (inline CSS and SVG, no script, no network)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from compare.audit import AuditResult
from settings.output import visible


def escape(value: str) -> str:
    """HTML-escaped, with controls, bidi overrides and lone surrogates shown escaped (a
    right-to-left override in a company id would reorder what the page shows)."""
    return html.escape(visible(value))


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.clean{color:#176b2c} .dirty{color:#b3261e} .error,.running{color:#8a6d00}
table{border-collapse:collapse;margin:4px 0 12px} td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left} th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.muted{color:#666} svg text{font-size:11px}
"""
_LEFT, _RIGHT = "#3366cc", "#dc7633"


def page(result: AuditResult, head: dict[str, Any], fields: Sequence[str], limit: int) -> str:
    """The audit as one HTML page: `head` (`compare.report.header`), the summary, and the
    first `limit` mismatches in the columns `fields` (the report's, as its CSV has them)."""
    s, r = result.summary, result.record
    title = f"Audit {r.date}: {r.left} vs {r.right}"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)} <span class='{escape(r.outcome)}'>"
        f"{escape(r.outcome.upper())}</span></h1>",
        f"<p class='muted'>audit {escape(r.audit_id)} · truth: {escape(r.truth)} · "
        f"started {escape(str(head['started_at']))} · ended {escape(str(head['ended_at']))}"
        f" · exit code {head['exit_code']}</p>",
    ]
    if s:
        parts += [
            _summary(s),
            "<h2>Mismatches per hour of the day</h2>",
            f"<p class='muted'>{escape(s['hour_chart']['meaning'])} (hour buckets only).</p>",
            _chart(s["hour_chart"], r.left, r.right),
            "<h2>Attribution</h2>",
            "<div class='grid'>",
            *(_attribution(name, rows) for name, rows in s["attribution"].items()),
            "</div>",
        ]
    parts.append(_detail(result, fields, limit))
    parts.append("</body></html>")
    return "\n".join(parts)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th>{escape(k)}</th><td class='n'>{escape(str(v))}</td></tr>" for k, v in pairs
    )


def _summary(s: dict[str, Any]) -> str:
    pairs: list[tuple[str, Any]] = [
        (k.replace("_", " "), s[k]) for k in ("keys_compared", "matched", "mismatched", "defects")
    ]
    pairs += [
        (f"class {k}" + (" (truth differs)" if k == "match" else ""), n)
        for k, n in s["classes"].items()
    ]
    pairs += [(f"truth supports {k}", n) for k, n in (s["truth_supports"] or {}).items()]
    pairs += [(f"{k} counts redeliveries", n) for k, n in (s["redeliveries"] or {}).items()]
    errors = "".join(
        f"<tr><th>{escape(m)}</th><td class='n'>{e['max_abs']}</td><td class='n'>"
        f"{e['mean_abs']}</td><td class='n'>{e['max_rel']:.2%}</td><td class='n'>"
        f"{e['mean_rel']:.2%}</td></tr>"
        for m, e in s["errors"].items()
    )
    t = s["totals"]
    totals = [("left", t["left_count"]), ("right", t["right_count"])]
    if t["truth_count"] is not None:
        totals.append(("truth", t["truth_count"]))
    return (
        "<h2>Summary</h2><div class='grid'><table>" + _rows(pairs) + "</table>"
        "<table><tr><th>error (where the stores differ)</th><th>max abs</th>"
        "<th>mean abs</th><th>max rel</th><th>mean rel</th></tr>" + errors + "</table>"
        "<table><tr><th colspan='2'>total count</th></tr>" + _rows(totals) + "</table></div>"
    )


def _chart(chart: dict[str, Any], left: str, right: str) -> str:
    """Grouped bars: per hour, the left and right series."""
    width, height, pad_l, pad_b, pad_t = 760, 240, 40, 28, 24
    top = max([1, *chart["left"], *chart["right"]])
    slot = (width - pad_l - 10) / 24
    bar = slot * 0.38
    plot_h = height - pad_b - pad_t
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='mismatches per hour'>"
    ]
    for frac in (0, 0.5, 1):
        y = pad_t + plot_h * (1 - frac)
        out.append(
            f"<line x1='{pad_l}' y1='{y:.1f}' x2='{width - 10}' y2='{y:.1f}' stroke='#e3e3e3'/>"
        )
        out.append(
            f"<text x='{pad_l - 6}' y='{y + 4:.1f}' text-anchor='end'>{round(top * frac)}</text>"
        )
    for h, label in enumerate(chart["hours"]):
        x0 = pad_l + h * slot + slot * 0.1
        for i, (series, color) in enumerate(((chart["left"], _LEFT), (chart["right"], _RIGHT))):
            value = series[h]
            bh = plot_h * value / top
            out.append(
                f"<rect x='{x0 + i * bar:.1f}' y='{pad_t + plot_h - bh:.1f}' "
                f"width='{bar:.1f}' height='{bh:.1f}' fill='{color}'>"
                f"<title>{label}h {'left' if i == 0 else 'right'}: {value}</title></rect>"
            )
        out.append(
            f"<text x='{x0 + bar:.1f}' y='{height - 10}' text-anchor='middle'>{label}</text>"
        )
    out.append(
        f"<rect x='{pad_l}' y='4' width='10' height='10' fill='{_LEFT}'/>"
        f"<text x='{pad_l + 14}' y='13'>left: {escape(left)}</text>"
        f"<rect x='{pad_l + 160}' y='4' width='10' height='10' fill='{_RIGHT}'/>"
        f"<text x='{pad_l + 174}' y='13'>right: {escape(right)}</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _attribution(name: str, rows: list[dict[str, Any]]) -> str:
    body = (
        "".join(
            f"<tr><td>{escape(str(row['label']))}</td><td class='n'>{row['mismatches']}</td>"
            f"<td class='n'>{row['share']:.1%}</td><td class='n'>{row['abs_delta_count']}</td></tr>"
            for row in rows
        )
        or "<tr><td colspan='4' class='muted'>none</td></tr>"
    )
    return (
        f"<table><tr><th colspan='4'>top {escape(name)}</th></tr><tr><th>{escape(name)}"
        "</th><th>mismatches</th><th>share</th><th>|Δ count|</th></tr>" + body + "</table>"
    )


def _detail(result: AuditResult, fields: Sequence[str], limit: int) -> str:
    if not result.has_detail():
        return "<h2>Detail</h2><p class='muted'>detail not available on this machine</p>"
    head = "".join(f"<th>{escape(f)}</th>" for f in fields)
    rows, more = [], 0
    for i, record in enumerate(result.mismatches()):
        if i >= limit:
            more += 1
            continue
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{escape('' if record.get(f) is None else str(record.get(f)))}</td>"
                for f in fields
            )
            + "</tr>"
        )
    note = f"<p class='muted'>{more} more not shown: use --format jsonl or csv.</p>" if more else ""
    return (
        f"<h2>Detail (first {min(limit, len(rows))})</h2><table><tr>{head}</tr>"
        + "".join(rows)
        + "</table>"
        + note
    )
