"""`abacus bench abacus` end to end, small: both jobs and legacy on the same events, on the
real servers, through the CLI. It checks that every figure is measured and consistent, never
how fast anything is (the figures are the benchmark's to print)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def test_bench_abacus_prints_every_figure(services_up: object) -> None:
    abacus = Path(sys.executable).parent / "abacus"
    done = subprocess.run(
        [
            str(abacus),
            "bench",
            "abacus",
            "--events",
            "400",
            "--warmup",
            "100",
            "--latency-events",
            "300",
            "--latency-rate",
            "100",
            "--probes-per-s",
            "5",
            "--legacy-events",
            "150",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)

    assert doc["parameters"]["events"] == 400 and doc["parameters"]["warmup_events"] == 100
    t = doc["throughput"]
    assert t["events"] == 400 and t["events_per_s"] > 0
    assert t["events_per_s"] == pytest.approx(400 / t["elapsed_s"], rel=0.01)
    assert set(t["per_job_events_per_s"]) == {"statistic", "customer"}
    assert {"statistic", "customer", "cassandra", "kafka"} <= set(t["cpu_us_per_event"])
    assert t["increments"]["account"] > t["increments"]["customer"] > 0

    f = doc["freshness"]
    assert f["probes"] == 300 // 20  # a probe every rate/probes_per_s events
    for kind in ("statistic", "customer"):  # every probe became visible, in order of size
        k = f[kind]
        assert k["seen"] == f["probes"]
        assert 0 < k["p50_ms"] <= k["p99_ms"] <= k["max_ms"]

    assert all(v > 0 for v in doc["rss_mb"].values())
    legacy = doc["legacy"]["throughput"]["sustained_events_per_s"]
    assert legacy > 0
    assert doc["ratio"] == pytest.approx(t["events_per_s"] / legacy, abs=0.06)
