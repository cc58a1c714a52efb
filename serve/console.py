"""The console page at `/`: one server-rendered HTML page (no build step, no script, no
CDN; charts are inline SVG as in compare's HTML report) for the morning read: the stage and
its gate, the audits per date with the drift over time (legacy - truth, Abacus - truth), the
pipelines' totals, rates per minute, lags and dead letters, and the transition history.

`collect(settings, session)` gathers the figures (seconds: it asks RabbitMQ, Kafka and the
ops keyspace), `rates(now, before)` and `render(doc)` are pure. The service collects at
most every `CACHE_S` (for the page and for `/metrics`, `serve.metrics.OpsCollector`) and
keeps the documents of the last minutes: rates compare the newest with the one nearest a
minute before it.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from settings import Settings

CACHE_S = 10.0
AUDIT_DAYS = 30  # dates on the drift chart
_LEGACY, _ABACUS = "#c0504d", "#4f81bd"
LEGACY_KEYS = (
    "queue_ready",
    "consumers",
    "processed",
    "dead_letters",
    "bertha_pending",
    "consuming",
)
LEGACY_COLUMNS = [
    "queue ready",
    "consumers",
    "processed",
    "dead letters",
    "Big Bertha pending",
    "consuming",
]


def collect(settings: Settings, session: Any) -> dict[str, Any]:
    """Every figure the page shows; a part that cannot be read says why instead."""
    doc: dict[str, Any] = {"generated_at": time.time()}
    for name, part in (
        ("cutover", _cutover),
        ("history", _history),
        ("audits", _audits),
        ("legacy", _legacy),
        ("bridges", _bridges),
        ("jobs", _jobs),
    ):
        try:
            doc[name] = part(settings, session)
        except Exception as exc:  # one unreadable part does not hide the others
            doc[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return doc


def _cutover(settings: Settings, session: Any) -> dict[str, Any]:
    from cutover.machine import Machine
    from cutover.status import status_doc
    from cutover.steps import TRANSITIONS

    return status_doc(settings, Machine(settings, session, TRANSITIONS))


def _history(settings: Settings, session: Any) -> list[dict[str, Any]]:
    from cutover.state import TransitionLog

    return TransitionLog(session, settings.cassandra).history(20)


def _audits(settings: Settings, session: Any) -> list[dict[str, Any]]:
    """Per date (newest first) and pair of stores, the latest ended full-scope audit of
    the last AUDIT_DAYS dates: outcome (clean, dirty, or error when it failed), keys
    compared and mismatched, and each side's drift from the truth (the sum over the date's
    counters). The page shows legacy vs shadow (`legacy_vs_shadow`), the metrics every pair."""
    from compare.audits import AuditStore, narrowed_by
    from storage import Prepared

    latest: dict[tuple[str, str, str], Any] = {}
    for r in AuditStore(Prepared(session), settings.cassandra).all():
        if r.state not in ("done", "failed") or narrowed_by(r):
            continue
        key = (r.date, r.left, r.right)
        if key not in latest or r.started_at > latest[key].started_at:
            latest[key] = r
    dates = sorted({date for date, _, _ in latest}, reverse=True)[:AUDIT_DAYS]
    out = []
    for key in sorted(latest, key=lambda k: (k[0], k[1], k[2]), reverse=True):
        if key[0] not in dates:
            continue
        r = latest[key]
        s = r.summary or {}
        totals = s.get("totals") or {}
        truth = totals.get("truth_count")
        out.append(
            {
                "date": r.date,
                "left": r.left,
                "right": r.right,
                "audit_id": r.audit_id,
                "outcome": "error" if r.state == "failed" else r.outcome,
                "keys_compared": s.get("keys_compared"),
                "mismatched": s.get("mismatched"),
                "legacy_drift": None if truth is None else totals.get("left_count", 0) - truth,
                "abacus_drift": None if truth is None else totals.get("right_count", 0) - truth,
            }
        )
    return out


def legacy_vs_shadow(audits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audits the page shows: legacy vs shadow (the shadow run's and the cutover's)."""
    return [a for a in audits if (a.get("left"), a.get("right")) == ("legacy", "shadow")]


# the totals the page shows as rates per minute: (part, figure)
RATE_FIGURES = (("legacy", "processed"), ("legacy", "dead_letters"))
BRIDGE_RATE_FIGURES = ("consumed", "produced", "dead_lettered")
RATE_WINDOW_S = (5.0, 300.0)  # rates compare with a snapshot between 5 s and 5 min old


def rates(now: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """Per-minute rates between two collected documents (`before` older; None: no rates):
    legacy's processed and dead-lettered tasks, each bridge's consumed, produced and
    dead-lettered messages, each job's lag change. A figure that went down (a restart) or
    is missing on either side has no rate."""
    if before is None:
        return {}
    seconds = now["generated_at"] - before["generated_at"]
    if not RATE_WINDOW_S[0] <= seconds <= RATE_WINDOW_S[1]:
        return {}

    def per_min(a: Any, b: Any) -> float | None:
        if not isinstance(a, int) or not isinstance(b, int) or a < b:
            return None
        return round((a - b) * 60.0 / seconds, 1)

    out: dict[str, Any] = {"over_s": round(seconds, 1)}
    for part, figure in RATE_FIGURES:
        new, old = now.get(part), before.get(part)
        if isinstance(new, dict) and isinstance(old, dict):
            out[f"{part}.{figure}"] = per_min(new.get(figure), old.get(figure))
    if isinstance(now.get("bridges"), list) and isinstance(before.get("bridges"), list):
        old_bridges = {b.get("name"): b.get("totals") or {} for b in before["bridges"]}
        for b in now["bridges"]:
            if (old_totals := old_bridges.get(b.get("name"))) is None:
                continue
            for figure in BRIDGE_RATE_FIGURES:
                new_value = (b.get("totals") or {}).get(figure)
                out[f"bridge.{b.get('name')}.{figure}"] = per_min(new_value, old_totals.get(figure))
    if isinstance(now.get("jobs"), list) and isinstance(before.get("jobs"), list):
        old_lags = {j["name"]: j.get("lag") for j in before["jobs"]}
        for j in now["jobs"]:
            a, b = j.get("lag"), old_lags.get(j["name"])
            if isinstance(a, int) and isinstance(b, int):
                out[f"job.{j['name']}.lag"] = round((a - b) * 60.0 / seconds, 1)
    return out


def _legacy(settings: Settings, session: Any) -> dict[str, Any]:
    from legacy.status import read_status

    st = read_status(settings, ask_workers=False)
    return {
        "queue_ready": st.ready,
        "consumers": st.consumers,
        "processed": st.stats.get("processed", 0),
        "dead_letters": st.dead_letters,
        "bertha_pending": st.pending_fields,
        "consuming": st.consuming,
        "problems": st.problems,
    }


def _bridges(settings: Settings, session: Any) -> list[dict[str, Any]]:
    from bridge import manage

    return manage.ps(settings)


def _jobs(settings: Settings, session: Any) -> list[dict[str, Any]]:
    from abacus import manager

    out = []
    for state in manager.statuses(settings):
        lag: int | str | None = None
        if state.status in manager.RUNNING:
            try:
                lag = manager.drain_status(settings, state.name).lag
            except Exception as exc:
                lag = f"unknown ({type(exc).__name__})"
        out.append(
            {
                "name": state.name,
                "status": state.status,
                "problem": manager.problem(state),
                "topic": state.topic,
                "group": state.group_id,
                "lag": lag,
            }
        )
    return out


# -- rendering (pure) ------------------------------------------------------------------------


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px;text-align:left;
border-bottom:1px solid #eee} .ok{color:#2e7d32} .bad{color:#c62828;font-weight:600}
.muted{color:#666} svg text{font-size:11px} .stage{font-size:28px;font-weight:700}
"""


def _t(value: Any) -> str:
    return escape("-" if value is None else str(value))


def _table(head: list[str], rows: list[list[str]]) -> str:
    """`rows` hold HTML already escaped by the caller."""
    if not rows:
        return "<p class='muted'>none</p>"
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _ok(flag: Any) -> str:
    return "<span class='ok'>yes</span>" if flag else "<span class='bad'>NO</span>"


def _error(part: Any) -> str | None:
    if isinstance(part, dict) and "error" in part:
        return f"<p class='bad'>cannot read: {_t(part['error'])}</p>"
    return None


def render(doc: dict[str, Any]) -> str:
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(doc["generated_at"]))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Abacus console</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Abacus console</h1><p class='muted'>as of {generated}</p>",
        _stage_section(doc["cutover"]),
        _audit_section(doc["audits"]),
        _pipeline_section(doc["legacy"], doc["bridges"], doc["jobs"], doc.get("rates") or {}),
        _history_section(doc["history"]),
        "</body></html>",
    ]
    return "".join(parts)


def _stage_section(c: Any) -> str:
    if (err := _error(c)) is not None:
        return "<h2>Stage</h2>" + err
    reads = c["reads"]
    out = [
        "<h2>Stage</h2>",
        f"<p><span class='stage' id='stage'>{_t(c['stage'])}</span> since {_t(c['since'])} "
        f"(epoch {_t(c['epoch'])}); reads from <b>{_t(reads['control'])}</b>"
        + (f", candidate {_t(reads['candidate'])}" if reads["candidate"] else "")
        + f"; healthy: {_ok(c['healthy'])}</p>",
    ]
    if c["transition"]:
        out.append(f"<p class='bad'>{_t(c['transition']['summary'])}</p>")
    out.append(
        _table(
            ["component", "ok", "detail"],
            [[_t(x["component"]), _ok(x["ok"]), _t(x["detail"])] for x in c["components"]],
        )
    )
    nxt = c.get("next")
    if nxt and nxt.get("gate"):
        g = nxt["gate"]
        verdict = (
            "<span class=ok>passed</span>" if g["passed"] else "<span class=bad>not passed</span>"
        )
        out.append(f"<p>gate to <b>{_t(nxt['stage'])}</b>: {_t(g['name'])}: {verdict}</p>")
        days = g["evidence"].get("days", [])
        if days:
            out.append(
                _table(
                    ["date", "outcome", "audit"],
                    [
                        [
                            _t(d["date"]),
                            _t(d["outcome"] or "no full-scope audit"),
                            _t(d["audit_id"]),
                        ]
                        for d in days
                    ],
                )
            )
    elif nxt and nxt.get("refused"):
        out.append(f"<p class='muted'>next: {_t(nxt['refused'])}</p>")
    return "".join(out)


def _audit_section(audits: Any) -> str:
    if (err := _error(audits)) is not None:
        return "<h2>Audits</h2>" + err
    audits = legacy_vs_shadow(audits)
    rows = []
    for a in audits:
        cls = "ok" if a["outcome"] == "clean" else "bad"
        rows.append(
            [
                _t(a["date"]),
                f"<span class='{cls}'>{_t(a['outcome'])}</span>",
                _t(a["keys_compared"]),
                _t(a["mismatched"]),
                _t(a["legacy_drift"]),
                _t(a["abacus_drift"]),
                _t(a["audit_id"]),
            ]
        )
    return (
        "<h2>Audits (legacy vs shadow, with the truth)</h2>"
        + drift_chart(list(reversed(audits)))
        + _table(
            ["date", "outcome", "keys", "mismatched", "legacy - truth", "Abacus - truth", "audit"],
            rows,
        )
    )


def drift_chart(audits: list[dict[str, Any]]) -> str:
    """Two lines over the dates (oldest first): legacy - truth and Abacus - truth, in
    counts (the sum over the date's counters)."""
    points = [a for a in audits if a["legacy_drift"] is not None]
    if not points:
        return "<p class='muted'>no audit with a truth yet</p>"
    width, height, pad_l, pad_b, pad_t = 760, 220, 56, 40, 24
    values = [v for a in points for v in (a["legacy_drift"], a["abacus_drift"])]
    top, bottom = max(1, *values), min(0, *values)
    plot_w, plot_h = width - pad_l - 16, height - pad_b - pad_t
    step = plot_w / max(1, len(points) - 1)

    def y(v: float) -> float:
        return pad_t + plot_h * (top - v) / (top - bottom)

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        "role='img' aria-label='drift from the truth per date' id='drift'>",
        f"<line x1='{pad_l}' y1='{y(0):.1f}' x2='{width - 16}' y2='{y(0):.1f}' stroke='#999'/>",
    ]
    for v in sorted({top, 0, bottom}):
        out.append(f"<text x='{pad_l - 6}' y='{y(v) + 4:.1f}' text-anchor='end'>{v}</text>")
    for key, color, name in (
        ("legacy_drift", _LEGACY, "legacy - truth"),
        ("abacus_drift", _ABACUS, "Abacus - truth"),
    ):
        xy = [(pad_l + i * step, y(a[key])) for i, a in enumerate(points)]
        out.append(
            f"<polyline fill='none' stroke='{color}' stroke-width='2' points='"
            + " ".join(f"{x:.1f},{yy:.1f}" for x, yy in xy)
            + "'/>"
        )
        for (x, yy), a in zip(xy, points, strict=True):
            out.append(
                f"<circle cx='{x:.1f}' cy='{yy:.1f}' r='3' fill='{color}'>"
                f"<title>{_t(a['date'])} {name}: {_t(a[key])}</title></circle>"
            )
    for i, a in enumerate(points):
        if len(points) <= 10 or i % max(1, len(points) // 10) == 0:
            out.append(
                f"<text x='{pad_l + i * step:.1f}' y='{height - 22}' text-anchor='middle'>"
                f"{_t(a['date'][5:])}</text>"
            )
    out.append(
        f"<rect x='{pad_l}' y='4' width='10' height='10' fill='{_LEGACY}'/>"
        f"<text x='{pad_l + 14}' y='13'>legacy - truth</text>"
        f"<rect x='{pad_l + 130}' y='4' width='10' height='10' fill='{_ABACUS}'/>"
        f"<text x='{pad_l + 144}' y='13'>Abacus - truth</text></svg>"
    )
    return "".join(out)


def _rate(rates: dict[str, Any], key: str) -> str:
    value = rates.get(key)
    return _t(None if value is None else f"{value:g}")


def _pipeline_section(legacy: Any, bridges: Any, jobs: Any, rates: dict[str, Any]) -> str:
    over = rates.get("over_s")
    out = [
        "<h2>Pipelines</h2>",
        f"<p class='muted'>rates per minute over the last {over:g} s</p>"
        if over
        else "<p class='muted'>rates per minute: from the next refresh (every "
        f"{CACHE_S:g} s at most)</p>",
        "<h3>legacy</h3>",
    ]
    if (err := _error(legacy)) is not None:
        out.append(err)
    else:
        out.append(
            _table(
                [*LEGACY_COLUMNS, "processed / min", "dead letters / min"],
                [
                    [_t(legacy.get(k)) for k in LEGACY_KEYS]
                    + [_rate(rates, "legacy.processed"), _rate(rates, "legacy.dead_letters")]
                ],
            )
        )
        for problem in legacy.get("problems") or []:
            out.append(f"<p class='bad'>{_t(problem)}</p>")
    out.append("<h3>bridges</h3>")
    if (err := _error(bridges)) is not None:
        out.append(err)
    else:
        rows = []
        for b in bridges:
            totals = b.get("totals") or {}
            rows.append(
                [
                    _t(b.get("name")),
                    _ok(b.get("running")),
                    _t(f"{b.get('queue')} -> {b.get('topic')}"),
                    _t(totals.get("consumed")),
                    _t(totals.get("produced")),
                    _t(totals.get("dead_lettered")),
                    _rate(rates, f"bridge.{b.get('name')}.produced"),
                    _rate(rates, f"bridge.{b.get('name')}.dead_lettered"),
                    _t(b.get("in_flight")),
                    _t(b.get("last_error")),
                ]
            )
        out.append(
            _table(
                [
                    "bridge",
                    "running",
                    "queue -> topic",
                    "consumed",
                    "produced",
                    "dead-lettered",
                    "produced / min",
                    "dead-lettered / min",
                    "in flight",
                    "last error",
                ],
                rows,
            )
        )
    out.append("<h3>Abacus jobs</h3>")
    if (err := _error(jobs)) is not None:
        out.append(err)
    else:
        out.append(
            _table(
                ["job", "status", "topic", "consumer lag", "lag change / min", "problem"],
                [
                    [
                        _t(j["name"]),
                        _t(j["status"]),
                        _t(j["topic"]),
                        _t(j["lag"]),
                        _rate(rates, f"job.{j['name']}.lag"),
                        _t(j["problem"]),
                    ]
                    for j in jobs
                ],
            )
        )
    return "".join(out)


def _history_section(history: Any) -> str:
    if (err := _error(history)) is not None:
        return "<h2>Transitions</h2>" + err
    rows = [
        [
            _t(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h["at_ms"] / 1000))),
            _t(h["kind"]),
            _t(f"{h['from_stage']} -> {h['to_stage']}"),
            _t(h["state"]),
            _t(f"{h['who']}@{h['host']}"),
            "<span class='bad'>forced</span>" if h["forced"] else "",
            _t(h["reason"]),
            _t(", ".join(h["audit_ids"])),
        ]
        for h in history
    ]
    return "<h2>Transitions</h2>" + _table(
        ["at (UTC)", "kind", "move", "state", "by", "", "reason", "audits"], rows
    )
