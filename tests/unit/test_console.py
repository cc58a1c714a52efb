"""The console page's rendering (pure): every part shown, a dirty date marked, hostile text
escaped, an unreadable part said so without hiding the others."""

from __future__ import annotations

from typing import Any

from serve.console import drift_chart, render

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
                "audit_id": "a-26",
                "outcome": "clean",
                "keys_compared": 10,
                "mismatched": 0,
                "legacy_drift": 0,
                "abacus_drift": 0,
            },
            {
                "date": "2026-11-25",
                "audit_id": "a-25",
                "outcome": "dirty",
                "keys_compared": 10,
                "mismatched": 3,
                "legacy_drift": 7,
                "abacus_drift": 0,
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
