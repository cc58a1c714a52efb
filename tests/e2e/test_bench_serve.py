"""`abacus bench serve` end to end, tiny: a loaded store, `abacus serve` in a subprocess,
wrk against it. It checks that every figure is there and that the requests were served
without errors, never how fast (the figures are the benchmark's to print)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def test_bench_serve_prints_every_figure(services_up: object) -> None:
    abacus = Path(sys.executable).parent / "abacus"
    tiny = ["--keys", "20", "--duration-s", "1", "--warmup-s", "0", "--threads", "1"]
    done = subprocess.run(
        [str(abacus), "bench", "serve", *tiny, "--connections", "2", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["loaded"] == {
        "keys": 20,
        "counters": 20 * 25,
        "seconds": result["loaded"]["seconds"],
    }
    for run in ("query", "health_baseline"):
        figures = result[run]
        assert figures["requests"] > 0 and figures["errors"] == 0, (run, figures)
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"], (run, figures)
    # the server counted the queries it answered: all 200, at least as many as wrk saw
    assert set(result["served_by_status"]) == {"200"}, result["served_by_status"]
    assert result["served_by_status"]["200"] >= result["query"]["requests"]
    assert result["driver_baseline"]["errors"] == 0
    assert result["driver_baseline"]["requests"] > 0
    assert set(result["ratios"]) == {"query_vs_health", "query_vs_driver"}
    assert isinstance(result["goal"]["met"], bool)
    assert result["goal"]["met"] == (
        result["query"]["requests_per_s"] >= 1000 and result["query"]["p99_ms"] <= 50
    )
