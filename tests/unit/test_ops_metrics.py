"""The read API's operations metrics (serve.metrics.OpsCollector) from a console document:
names, labels and values in Prometheus' text format, parsed back by prometheus_client."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from serve.metrics import Metrics
from tests.metrics import Samples, samples
from tests.unit.test_console import doc


def scrape(document: dict[str, Any] | None) -> Samples:
    metrics = Metrics()
    metrics.ops.document = document
    return samples(generate_latest(metrics.registry).decode())


def test_stage_audits_lag_and_queue_as_gauges() -> None:
    got = scrape(doc())
    assert got[("abacus_cutover_stage", (("stage", "shadow"),))] == 1
    assert got[("abacus_cutover_stage", (("stage", "legacy"),))] == 0
    assert got[("abacus_cutover_stage", (("stage", "m1"),))] == 0
    assert got[("abacus_cutover_in_transition", ())] == 0
    dirty = (("date", "2026-11-25"), ("left", "legacy"), ("outcome", "dirty"), ("right", "shadow"))
    assert got[("abacus_audit_outcome", dirty)] == 1
    clean = (("date", "2026-11-25"), ("left", "legacy"), ("outcome", "clean"), ("right", "shadow"))
    assert got[("abacus_audit_outcome", clean)] == 0
    error = (("date", "2026-11-25"), ("left", "shadow"), ("outcome", "error"), ("right", "m2"))
    assert got[("abacus_audit_outcome", error)] == 1
    pair = (("date", "2026-11-25"), ("left", "legacy"), ("right", "shadow"))
    assert got[("abacus_audit_wrong_keys", pair)] == 3
    assert got[("abacus_audit_keys_compared", pair)] == 10
    assert (
        got[("abacus_audit_net_drift", (*pair[:2], ("right", "shadow"), ("store", "legacy")))] == 7
    )
    assert (
        got[("abacus_audit_net_drift", (*pair[:2], ("right", "shadow"), ("store", "shadow")))] == 0
    )
    lag = (("abacus_job", "cutover-statistic"), ("group", "g"), ("topic", "t"))
    assert got[("abacus_consumer_lag_messages", lag)] == 0
    assert got[("abacus_legacy_queue_consumers", ())] == 1
    assert got[("abacus_legacy_dead_letter_messages", ())] == 2
    assert all(got[("abacus_ops_part_up", (("part", p),))] == 1 for p in ("cutover", "jobs"))


def test_an_unreadable_part_is_down_and_has_no_series() -> None:
    got = scrape(doc(jobs={"error": "KafkaException: down"}))
    assert got[("abacus_ops_part_up", (("part", "jobs"),))] == 0
    assert not any(name == "abacus_consumer_lag_messages" for name, _ in got)
    assert got[("abacus_cutover_stage", (("stage", "shadow"),))] == 1


def test_nothing_before_the_first_snapshot() -> None:
    got = scrape(None)
    assert not any(
        name.startswith(("abacus_ops", "abacus_audit", "abacus_cutover")) for name, _ in got
    )
    assert any(name.startswith("abacus_serve_") for name, _ in got)  # the request metrics are
