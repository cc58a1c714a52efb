"""The alert rules (services/rules/alerts.yml), checked and evaluated by promtool.

`promtool check rules` validates the file; `promtool test rules` runs Prometheus' own rule
evaluation on the synthetic series of tests/prometheus/alerts_test.yml, where each alert
fires on its input and stays quiet on the healthy series beside it. No server is needed;
promtool is: `abacus services install` installs it (the Debian package `prometheus`).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from bridge.status import Counts, PrometheusCollector
from serve.metrics import Metrics
from tests.metrics import promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "services" / "rules" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
README = ROOT / "services" / "README.md"


def alerts() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def test_promtool_checks_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_is_shown_firing_in_the_rule_tests() -> None:
    names = alerts()
    assert len(names) >= 6
    text = RULE_TESTS.read_text()
    for name in names:
        # an evaluation of this alert that expects a firing alert (a non-empty exp_alerts)
        firing = re.search(
            rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", text, re.MULTILINE
        )
        assert firing, f"{name}: no test shows it firing"


def test_rules_file_is_package_data() -> None:
    shipped = resources.files("services") / "rules" / "alerts.yml"
    assert shipped.read_text() == RULES.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"rules/*.yml"' in pyproject


def metric_names() -> set[str]:
    exprs = re.findall(r"expr: (?:>-\n)?((?:.+\n)+?)\s+(?:for|labels):", RULES.read_text())
    names = set(re.findall(r"\b(abacus_[a-z0-9_]+|up)\b", "\n".join(exprs)))
    assert names, "no metric names found in the rules' expressions"
    return names


def test_every_metric_the_rules_use_is_listed_in_the_readme() -> None:
    readme = README.read_text()
    for name in metric_names():
        assert f"`{name}`" in readme, f"{name} is not in services/README.md's list"


def test_every_metric_the_rules_use_is_exported_or_recorded() -> None:
    """Each name an alert reads is exported by the project's code (the bridge's collector,
    the read API's registry with an operations document) or made by a recording rule of
    services/rules/ (the jobs' figures, renamed from Flink's reporter), or is `up`."""
    from tests.unit.test_console import doc

    registry = CollectorRegistry(auto_describe=False)
    counts = Counts(dead_lettered_by_reason={"invalid": 1})
    registry.register(PrometheusCollector(counts, "shadow", lambda: 0))
    serve = Metrics()
    serve.ops.document = doc()
    exposed = generate_latest(registry).decode() + generate_latest(serve.registry).decode()
    exported = set(re.findall(r"^(\w+)[{ ]", exposed, re.MULTILINE))
    recorded = {
        name
        for rules in RULES.parent.glob("*.yml")
        for name in re.findall(r"^\s*- record: (\S+)", rules.read_text(), re.MULTILINE)
    }
    used = metric_names() - {"up"}
    assert used, "the rules use no metric"
    assert used <= exported | recorded, (
        f"neither exported nor recorded: {sorted(used - exported - recorded)}"
    )
