"""A shadow run restarts a component that died (`shadow.components.Components.supervise`):
the bridge SIGKILLed mid-stream, and the statistic job's process group SIGKILLed (restored
from its latest checkpoint). One small run each (`abacus bench faults`' injection)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.faults import FaultRow, run_fault
from services.base import StartResult
from services.paths import data_dir
from settings.model import Settings

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

EVENTS, RATE = 300, 15.0


def _result(settings: Settings, row: FaultRow) -> dict[str, Any]:
    doc = json.loads((data_dir(settings) / "shadow" / row.run_id / "run.json").read_text())
    return dict(doc["result"])


def _restarted(result: dict[str, Any], component: str) -> list[dict[str, Any]]:
    return [r for r in result["restarts"] if r["component"] == component]


def test_bridge_killed_is_restarted_and_loses_nothing(
    fault_settings: Settings, fault_services: list[StartResult]
) -> None:
    row = run_fault(fault_settings, "bridge-kill", EVENTS, RATE, seed=6, drain_timeout_s=300)
    print(f"\n{row}")
    assert row.error is None and row.exit_code in (0, 1), row  # drained, audited
    result = _result(fault_settings, row)
    print(f"restarts: {result['restarts']}")
    (restart,) = _restarted(result, "bridge")
    assert restart["exit"] == "signal 9 (SIGKILL)", restart
    assert row.published > EVENTS
    # the bridge acks a message once Kafka has it: a kill loses nothing, and the jobs'
    # keep-first by event_id absorbs what it produced again
    assert row.abacus["under"] == 0 and row.abacus["over"] == 0, row.abacus
    assert row.abacus["excess"] == 0, row.abacus
    assert row.abacus["queued"] == 0, row.abacus


def test_statistic_job_killed_is_restored_and_its_excess_reported(
    fault_settings: Settings, fault_services: list[StartResult]
) -> None:
    row = run_fault(fault_settings, "statistic-job-kill", EVENTS, RATE, seed=7, drain_timeout_s=300)
    print(f"\n{row}")
    assert row.error is None and row.exit_code in (0, 1), row  # drained, audited
    result = _result(fault_settings, row)
    (restart,) = _restarted(result, "Abacus statistic")
    assert restart["exit"] in ("signal 9 (SIGKILL)", "unknown"), restart
    increments = result["abacus_increments"]
    statistic = increments["jobs"]["statistic"]
    excess = row.abacus["excess"]
    print(
        f"restart: {restart}\nincrements: {increments}\nexcess {excess} count increments; "
        f"explanation: {result['explanation']}"
    )
    assert statistic["processes"] == 2, statistic
    assert row.abacus["under"] == 0, row.abacus
    # over the truth by at least what was recorded written again, at most that plus the
    # writes of unknown fate (among them what the killed process had pending)
    assert increments["reapplied"] <= excess, (excess, increments)
    assert excess <= increments["reapplied"] + increments["uncertain"], (excess, increments)
    if excess:
        assert result["explanation"], result  # the run says why Abacus is over
