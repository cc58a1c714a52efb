"""The recording rules (services/rules/records.yml), checked and evaluated by promtool.

`promtool check rules` validates the file; `promtool test rules` evaluates it, with the alert
rules, on the synthetic Flink series of tests/prometheus/records_test.yml (named as a scrape
of a local job showed them). Beside that: the raw names the rules read are the ones the
jobs' code registers (abacus/operators.py, abacus/jvm's Metrics.java), and every
`abacus_job_*` name the alert rules use is recorded here.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from abacus.operators import DEAD_LETTERED, EVENTS_PARSED
from tests.metrics import promtool

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "services" / "rules" / "alerts.yml"
RECORDS = ROOT / "services" / "rules" / "records.yml"
RECORD_TESTS = ROOT / "tests" / "prometheus" / "records_test.yml"
JAVA_METRICS = (
    ROOT / "abacus" / "jvm" / "src" / "main" / "java" / "abacus" / "sink" / "Metrics.java"
)
OPERATOR = "flink_taskmanager_job_task_operator_"

# the stable names, as issue 15 and the alert rules need them
WANTED = {
    "abacus_job_events_parsed_total",
    "abacus_job_dead_lettered_total",
    "abacus_job_increments_fanned_total",
    "abacus_job_increments_written_total",
    "abacus_job_seed_rows_absorbed_total",
    "abacus_job_restarts_total",
    "abacus_job_pending_records",
}


def recorded() -> list[str]:
    return re.findall(r"^\s*- record: (\w+)$", RECORDS.read_text(), re.MULTILINE)


def test_promtool_checks_the_rules_file() -> None:
    result = promtool("check", "rules", str(RECORDS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(recorded())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RECORD_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_stable_names_are_recorded_once_each() -> None:
    names = recorded()
    assert sorted(names) == sorted(set(names)), names
    assert set(names) == WANTED


def test_every_recorded_name_is_evaluated_in_the_rule_tests() -> None:
    text = RECORD_TESTS.read_text()
    for name in recorded():
        assert re.search(rf"- expr: {name}\n", text), f"{name}: no promql_expr_test reads it"


def test_the_job_metrics_the_alerts_use_are_recorded() -> None:
    used = set(re.findall(r"\b(abacus_job_[a-z0-9_]+)\b", ALERTS.read_text()))
    assert used, "the alert rules use no job metric"
    assert used <= set(recorded()), f"not recorded: {sorted(used - set(recorded()))}"


def test_the_raw_names_are_the_ones_the_jobs_register() -> None:
    """A metric renamed in the code, not in the rules, would record nothing."""
    java = dict(re.findall(r'static final String (\w+) = "(\w+)";', JAVA_METRICS.read_text()))
    registered = {
        EVENTS_PARSED,
        f"reason_{DEAD_LETTERED}",  # a counter in the group ("reason", <reason>)
        *java.values(),
    }
    assert len(java) == 3, java
    read = set(re.findall(rf"\b{OPERATOR}(\w+)", RECORDS.read_text()))
    flinks_own = {"pendingRecords"}  # the Kafka source's (Flink's standard source metric)
    assert read - flinks_own == registered, (read, registered)
    assert "flink_jobmanager_job_numRestarts" in RECORDS.read_text()


def test_rules_file_is_package_data() -> None:
    shipped = resources.files("services") / "rules" / "records.yml"
    assert shipped.read_text() == RECORDS.read_text()
