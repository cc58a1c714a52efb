"""The Prometheus service (services/prometheus.py) for real: a private data directory and
private ports (never the shared servers'), a bridge metrics endpoint of the project's own
code (bridge.status.serve_metrics) to scrape, and Prometheus' HTTP API to read: ready, the
alert rules loaded, the scrape targets, a bridge metric scraped and an alert firing on it."""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.status import Counts, serve_metrics
from services import manager, targets
from services.prometheus import PrometheusService
from settings.model import Settings
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def api(svc: PrometheusService, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://{svc.address}{path}{query}", timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


@pytest.fixture
def private(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Counts]]:
    """Settings with a private data dir and ports, and a live bridge metrics endpoint."""
    counts = Counts(consumed=10, produced=7, dead_lettered=3)
    counts.dead_lettered_by_reason = {"invalid": 3}
    bridge_port = free_port()
    server, _thread = serve_metrics(bridge_port, counts, "shadow", lambda: 0)
    s = settings.model_copy(
        update={
            "services": settings.services.model_copy(
                update={
                    "data_dir": tmp_path / "data",
                    "prometheus_port": free_port(),
                    "prometheus_scrape_s": 2.0,
                }
            ),
        }
    )
    # announced as the processes announce themselves (services.targets); nothing listens
    # at the read API's address: that target is down
    targets.register(s, "bridge", "shadow-test", f"127.0.0.1:{bridge_port}")
    targets.register(s, "serve", "test", f"127.0.0.1:{free_port()}")
    try:
        yield s, counts
    finally:
        manager.stop(s, ["prometheus"])
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_the_targets_and_evaluates_the_alert_rules(
    private: tuple[Settings, Counts],
) -> None:
    s, _counts = private
    (started,) = manager.ensure_up(s, ["prometheus"])
    svc = PrometheusService(s)
    assert not started.already_running and started.version.startswith("2.")
    with urllib.request.urlopen(f"http://{svc.address}/-/ready", timeout=10) as r:
        assert r.status == 200
    # the shipped rules, loaded
    groups = api(svc, "/api/v1/rules")["groups"]
    alerts = {rule["name"] for g in groups for rule in g["rules"] if rule["type"] == "alerting"}
    assert {
        "AbacusComponentDown",
        "AbacusBridgeDeadLettersGrowing",
        "AbacusJobDeadLettersGrowing",
        "AbacusConsumerLagGrowing",
        "AbacusMirrorQueueOverflow",
        "AbacusOverflowQueueFull",
        "AbacusJobRestarting",
        "AbacusAuditDirty",
        "AbacusAuditFailed",
    } <= alerts
    # the three targets, each scraped once: itself and the bridge up, serve (not running) down
    # (the kinds with no target file, legacy and flink, have no target)
    expected = {"prometheus": "up", "bridge": "up", "serve": "down"}

    def health() -> dict[str, str]:
        targets = api(svc, "/api/v1/targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    wait_for("each target scraped", health, lambda h: h == expected, timeout_s=90)
    # the bridge's counter, through PromQL
    found = api(svc, "/api/v1/query", query="abacus_bridge_dead_lettered_total")["result"]
    assert [(r["metric"]["reason"], r["value"][1]) for r in found] == [("invalid", "3")]
    # a new dead-letter series above 0: the alert fires (it has no `for`)
    firing = wait_for(
        "AbacusBridgeDeadLettersGrowing firing",
        lambda: api(svc, "/api/v1/alerts")["alerts"],
        lambda a: any(
            x["labels"]["alertname"] == "AbacusBridgeDeadLettersGrowing" and x["state"] == "firing"
            for x in a
        ),
        timeout_s=90,
    )
    dead = next(x for x in firing if x["labels"]["alertname"] == "AbacusBridgeDeadLettersGrowing")
    assert dead["labels"]["mode"] == "shadow" and dead["labels"]["reason"] == "invalid"
    # `status` names it; `down` stops it
    (status,) = manager.status(s, ["prometheus"]).services
    assert status.state == "running" and status.address == svc.address
    (stopped,) = manager.stop(s, ["prometheus"])
    assert stopped.was_running and svc.pid() is None
