"""Bridge counts: per-minute deltas, the status file, Prometheus exposition."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from bridge.status import Counts, Minutes, PrometheusCollector, read_status, write_status


def test_per_minute_rows_are_deltas_and_sum_to_the_totals() -> None:
    counts = Counts()
    minutes = Minutes()
    t0 = 1_700_000_000 - 1_700_000_000 % 60
    minutes.tick(t0, counts)
    counts.consumed, counts.acked = 10, 8
    minutes.tick(t0 + 30, counts)
    minutes.tick(t0 + 60, counts)
    counts.consumed, counts.acked, counts.produced = 25, 25, 25
    rows = minutes.table(counts)
    assert [r["consumed"] for r in rows] == [10, 15]
    assert [r["acked"] for r in rows] == [8, 17]
    assert sum(r["produced"] for r in rows) == counts.produced
    assert rows[0]["minute"].endswith("Z")


def test_status_file_round_trip_and_liveness(tmp_path: Path) -> None:
    path = tmp_path / "bridge" / "shadow.json"
    import time

    write_status(path, {"pid": os.getpid(), "updated_at": time.time(), "totals": {"acked": 3}})
    doc = read_status(path)
    assert doc is not None and doc["running"] and doc["totals"]["acked"] == 3
    write_status(path, {"pid": 2**22 + 12345, "updated_at": time.time()})
    doc = read_status(path)
    assert doc is not None and not doc["running"]
    assert read_status(tmp_path / "missing.json") is None


def test_prometheus_exposition() -> None:
    counts = Counts(consumed=5, produced=3, dead_lettered=2, acked=5)
    counts.dead_lettered_by_reason["pickle"] = 2
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(counts, "shadow", lambda: 7))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'abacus_bridge_consumed_total{mode="shadow"} 5.0' in text
    assert 'abacus_bridge_dead_lettered_total{mode="shadow",reason="pickle"} 2.0' in text
    assert 'abacus_bridge_in_flight_messages{mode="shadow"} 7.0' in text
