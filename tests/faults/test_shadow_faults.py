"""Faults during a shadow run with traffic flowing (`abacus bench faults`, one run each).

The whole matrix is `abacus bench faults` (its figures are in bench/README.md); CI runs the
two whose outcome the issue states without depending on a legacy flaw's luck: Cassandra
killed and started again, and `shadow run` itself killed (a second run cleans up).
"""

from __future__ import annotations

import pytest

from bench.faults import run_fault
from services.base import StartResult
from settings.model import Settings

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

EVENTS, RATE = 450, 20.0


def test_cassandra_killed_mid_stream_every_pipeline_drains(
    fault_settings: Settings, fault_services: list[StartResult]
) -> None:
    row = run_fault(fault_settings, "cassandra-kill", EVENTS, RATE, seed=3, drain_timeout_s=300)
    print(f"\n{row}")
    assert "restarted, stale pid cleaned" in row.injected, row.injected
    assert row.error is None and row.exit_code in (0, 1), row  # drained, audited
    assert row.published > EVENTS
    abacus = row.abacus
    assert abacus["under"] == 0, abacus
    # over the truth by exactly what restores re-applied, plus at most the writes whose
    # fate the kill left unknown (count increments, both stores)
    assert abacus["reapplied"] <= abacus["excess"] <= abacus["reapplied"] + abacus["uncertain"]


def test_a_killed_shadow_run_is_cleaned_up_by_the_next(
    fault_settings: Settings, fault_services: list[StartResult]
) -> None:
    row = run_fault(fault_settings, "shadow-run-kill", 300, RATE, seed=4, drain_timeout_s=300)
    print(f"\n{row}")
    assert row.exit_code == -9, row
    assert "the next run exited 0 and left 0 component(s), 0 job(s)" in row.note, row.note
