"""The console page's rendering (pure): every part shown, a dirty date marked, hostile text
escaped, an unreadable part said so without hiding the others."""

from __future__ import annotations

from typing import Any

from serve.console import drift_chart, rates, render

HOSTILE = "<script>alert(1)</script>\u202e"


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "generated_at": 1_795_000_000,
        "cutover": {
            "stage": "shadow",
            "since": "2026-11-27 16:40:01 UTC",
            "epoch": 0,
            "reads": {"control": "legacy", "candidate": "shadow"},
            "transition": None,
            "healthy": True,
            "components": [{"component": "shadow bridge", "ok": True, "detail": HOSTILE}],
            "next": {
                "stage": "m1",
                "gate": {
                    "name": "3 consecutive clean daily audits",
                    "passed": False,
                    "evidence": {
                        "days": [{"date": "2026-11-25", "outcome": "dirty", "audit_id": "a-25"}]
                    },
                    "audit_ids": ["a-25"],
                },
            },
        },
        "audits": [
            {
                "date": "2026-11-26",
                "left": "legacy",
                "right": "shadow",
                "audit_id": "a-26",
                "outcome": "clean",
                "keys_compared": 10,
                "mismatched": 0,
                "legacy_drift": 0,
                "abacus_drift": 0,
            },
            {
                "date": "2026-11-25",
                "left": "legacy",
                "right": "shadow",
                "audit_id": "a-25",
                "outcome": "dirty",
                "keys_compared": 10,
                "mismatched": 3,
                "legacy_drift": 7,
                "abacus_drift": 0,
            },
            {  # another pair: in the metrics, not on the page
                "date": "2026-11-25",
                "left": "shadow",
                "right": "m2",
                "audit_id": "other-pair",
                "outcome": "error",
                "keys_compared": None,
                "mismatched": None,
                "legacy_drift": None,
                "abacus_drift": None,
            },
        ],
        "legacy": {
            "queue_ready": 0,
            "consumers": 1,
            "processed": 99,
            "dead_letters": 2,
            "bertha_pending": 0,
            "consuming": True,
            "problems": [],
        },
        "bridges": [
            {
                "name": "shadow",
                "running": True,
                "queue": "q",
                "topic": "t",
                "totals": {"consumed": 5, "produced": 5, "dead_lettered": 0},
                "in_flight": 0,
                "last_error": None,
            }
        ],
        "jobs": [
            {
                "name": "cutover-statistic",
                "status": "RUNNING",
                "topic": "t",
                "group": "g",
                "lag": 0,
                "problem": None,
            }
        ],
        "history": [
            {
                "at_ms": 1_795_000_000_000,
                "kind": "advance",
                "from_stage": "legacy",
                "to_stage": "shadow",
                "state": "done",
                "who": "ops",
                "host": "h",
                "forced": True,
                "reason": HOSTILE,
                "audit_ids": [],
            }
        ],
    }
    return base | changes


def test_every_part_is_shown_and_hostile_text_escaped() -> None:
    page = render(doc())
    assert "<script>" not in page and "&lt;script&gt;" in page
    for text in (
        "id='stage'>shadow<",
        "not passed",
        "2026-11-25",
        "dirty",
        "a-25",
        "cutover-statistic",
        "legacy -&gt; shadow",
        "forced",
        "Big Bertha pending",
    ):
        assert text in page, text
    assert "<svg" in page and "id='drift'" in page
    assert "other-pair" not in page
    assert "rates per minute: from the next refresh" in page  # no earlier snapshot yet


def test_the_drift_chart_plots_both_sides_per_date() -> None:
    audits = list(reversed(doc()["audits"]))  # oldest first
    svg = drift_chart(audits)
    assert svg.count("<polyline") == 2
    assert "11-25 legacy - truth: 7" in svg and "11-26 Abacus - truth: 0" in svg
    assert drift_chart([]) == "<p class='muted'>no audit with a truth yet</p>"


def test_an_unreadable_part_says_why_and_the_rest_is_shown() -> None:
    page = render(doc(jobs={"error": "KafkaException: broker down"}, audits={"error": "x"}))
    assert "cannot read: KafkaException: broker down" in page
    assert "id='stage'>shadow<" in page and "legacy -&gt; shadow" in page


def test_rates_per_minute_against_an_older_snapshot() -> None:
    before = doc()
    now = doc(generated_at=before["generated_at"] + 30)
    now["legacy"] = before["legacy"] | {"processed": 159, "dead_letters": 1}  # DLQ purged
    now["bridges"] = [before["bridges"][0] | {"totals": {"consumed": 65, "produced": 35}}]
    now["jobs"] = [before["jobs"][0] | {"lag": 40}]
    r = rates(now, before)
    assert r == {
        "over_s": 30.0,
        "legacy.processed": 120.0,  # 60 in 30 s
        "legacy.dead_letters": None,  # went down: no rate
        "bridge.shadow.consumed": 120.0,
        "bridge.shadow.produced": 60.0,
        "bridge.shadow.dead_lettered": None,  # missing now
        "job.cutover-statistic.lag": 80.0,
    }
    page = render(now | {"rates": r})
    assert "rates per minute over the last 30 s" in page
    assert "<td>120</td>" in page and "<td>80</td>" in page
    assert rates(now, None) == {}
    assert rates(now, now) == {}  # too close together to say
    assert rates(doc(generated_at=before["generated_at"] + 3600), before) == {}  # too far apart
