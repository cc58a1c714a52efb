"""A local job's metrics through Flink's Prometheus reporter, on the real servers.

One statistic job in isolation (its own topics, keyspaces, group and name) counts a known
set of events: generated ones with duplicates, and invalid ones of two reasons. While it
runs, its metrics endpoint is announced in `<data_dir>/prometheus/targets/flink-<name>.json`
and named by `abacus job status`; a scrape of that address has the job's own counters equal
to what the events imply, by the contract (`counting`): events parsed = the valid
deliveries, dead letters per reason = the invalid ones, increments fanned = the account keys
of the first deliveries = increments written once drained; and Flink's numRestarts is 0.
After a clean stop the target file is gone.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from abacus import manager
from counting import Event, Rejection, account_keys, parse_event
from services import targets
from settings.model import Settings
from tests.integration.abacus_runs import generated_events, isolated_run, job_status
from tests.waiting import wait_for, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the job's own counters as Flink's reporter names them (user metrics of an operator group)
OPERATOR = "flink_taskmanager_job_task_operator_"
PARSED = OPERATOR + "eventsParsed"
DEAD_LETTERED = OPERATOR + "reason_deadLettered"
FANNED = OPERATOR + "incrementsFanned"
WRITTEN = OPERATOR + "incrementsWritten"
RESTARTS = "flink_jobmanager_job_numRestarts"


def _invalid_lines() -> list[str]:
    """Invalid events of two reasons: not JSON, and a JSON object without its fields."""
    return [
        *(f'{{"event_id": "broken-{i}", ' for i in range(3)),
        *(json.dumps({"event_id": f"partial-{i}"}) for i in range(2)),
    ]


def _expected(lines: list[str]) -> dict[str, Any]:
    """What the job's counters must read after counting `lines`, by the contract."""
    parsed, seen, fanned = 0, set(), 0
    reasons: Counter[str] = Counter()
    for line in lines:
        event = parse_event(line)
        if isinstance(event, Rejection):
            reasons[event.reason.value] += 1
            continue
        assert isinstance(event, Event)
        parsed += 1
        if event.event_id not in seen:  # the keep-first by event_id
            seen.add(event.event_id)
            fanned += len(account_keys(event))
    return {
        PARSED: parsed,
        FANNED: fanned,
        WRITTEN: fanned,
        DEAD_LETTERED: dict(reasons),
        RESTARTS: 0,
    }


def _scrape(address: str, flink_job: str) -> dict[str, Any]:
    """The job's counters from its reporter at `address`, summed over subtasks and
    operators (dead letters per reason); the reporter's raw text under `text`."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        text = response.read().decode()
    found: dict[str, Any] = {DEAD_LETTERED: {}, "text": text}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("job_name") != flink_job:
                continue
            if sample.name == DEAD_LETTERED:
                reason = sample.labels["reason"]
                found[DEAD_LETTERED][reason] = found[DEAD_LETTERED].get(reason, 0) + sample.value
            elif sample.name in (PARSED, FANNED, WRITTEN, RESTARTS):
                found[sample.name] = found.get(sample.name, 0) + sample.value
    return found


def _target(settings: Settings, name: str) -> targets.Target | None:
    """The job's target (its file's address and labels), None when there is none."""
    for target in targets.listed(settings):
        if target.kind == "flink" and target.labels.get("abacus_job") == name:
            return target
    return None


def test_a_local_jobs_counters_reach_its_prometheus_endpoint(
    settings: Settings, services_up: object
) -> None:
    with isolated_run(settings, f"m{uuid.uuid4().hex[:8]}", metrics_port=0) as run:
        invalid = _invalid_lines()
        lines = [*generated_events(seed=15, n=240), *invalid]
        want = _expected(lines)
        assert len(want[DEAD_LETTERED]) == 2, want[DEAD_LETTERED]  # two reasons
        assert want[FANNED] > want[PARSED] > 0, want
        run.produce(lines)

        name = run.name("statistic")
        path = targets.targets_dir(run.settings) / f"flink-{name}.json"
        started = manager.start(run.settings, "statistic", "shadow", run.options())
        entry = _target(run.settings, name)
        assert entry is not None and path.is_file(), (
            f"no target file for {name}: {targets.listed(run.settings)}"
        )
        address = entry.address
        assert address == f"127.0.0.1:{started.metrics_port}", (entry, started)

        # job status names the same endpoint
        job = job_status(run.settings, name)
        assert job["metrics"] == f"http://{address}/metrics", job

        flink_job = f"abacus-{name}"
        wanted = {k: want[k] for k in (PARSED, FANNED, WRITTEN, DEAD_LETTERED, RESTARTS)}

        def counters() -> dict[str, Any]:
            got = _scrape(address, flink_job)
            return {k: got.get(k) for k in wanted}

        wait_for(
            f"the counters of {flink_job} at {address} equal {wanted}",
            counters,
            lambda got: got == wanted,
            timeout_s=240,
            poll_s=2,
        )
        # the job's offsets are committed and its windows written: nothing more comes
        manager.wait_drained(run.settings, [name], 240)
        assert counters() == wanted

        manager.stop(run.settings, name)
        wait_until(
            f"{path} removed after the job stopped",
            lambda: not path.exists(),
            timeout_s=60,
        )
        assert _target(run.settings, name) is None
