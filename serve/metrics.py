"""The read API's Prometheus metrics, in a registry of its own (`GET /metrics`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from cutover.stages import STAGES

# request latency buckets (seconds): the goal is p99 <= 50 ms
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


AUDIT_OUTCOMES = ("clean", "dirty", "error")
PARTS = ("cutover", "history", "audits", "legacy", "bridges", "jobs")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ops = OpsCollector()
        r.register(self.ops)
        self.requests = Counter(
            "abacus_serve_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "abacus_serve_request_seconds",
            "request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.reads = Counter(
            "abacus_serve_reads",
            "queries answered by stage and store",
            ["stage", "store"],
            registry=r,
        )
        self.compared = Counter(
            "abacus_serve_experiment_compared",
            "experiment samples judged (match, lagged, mismatch or ignored)",
            registry=r,
        )
        self.mismatches = Counter(
            "abacus_serve_experiment_mismatches",
            "samples where the candidate differed from a control that agreed with itself",
            registry=r,
        )
        self.ignored = Counter(
            "abacus_serve_experiment_ignored",
            "samples not judged: the control disagreed with itself (the noise floor)",
            registry=r,
        )
        self.lagged = Counter(
            "abacus_serve_experiment_lagged",
            "samples where the candidate differed, then agreed after the settle delay",
            registry=r,
        )
        self.dropped = Counter(
            "abacus_serve_experiment_dropped",
            "samples dropped because the experiment's queue was full",
            registry=r,
        )
        self.errors = Counter(
            "abacus_serve_experiment_errors", "samples whose reads failed", registry=r
        )
        self.stage_version = Gauge(
            "abacus_serve_stage_version", "the stage row's version the API follows", registry=r
        )


class OpsCollector:
    """The operations figures of the newest console snapshot (`Service.snapshot`, set in
    `document`) as gauges, read at scrape time: the cutover stage, the audits per date and
    pair of stores, the jobs' consumer lag, legacy's queue. Nothing before the first
    snapshot; a part that could not be read is `abacus_ops_part_up{part} 0` and no series."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None

    def describe(self) -> list[Metric]:
        return []  # figures appear with the first snapshot

    def collect(self) -> Iterator[Metric]:
        doc = self.document
        if doc is None:
            return
        up = GaugeMetricFamily(
            "abacus_ops_part_up",
            "1 when the part could be read at the last collection",
            labels=["part"],
        )
        for part in PARTS:
            up.add_metric([part], 0.0 if _failed(doc.get(part)) else 1.0)
        yield up
        yield from _cutover(doc.get("cutover"))
        yield from _audits(doc.get("audits"))
        yield from _jobs(doc.get("jobs"))
        yield from _legacy(doc.get("legacy"))


def _failed(part: Any) -> bool:
    return part is None or (isinstance(part, dict) and "error" in part)


def _cutover(c: Any) -> Iterator[Metric]:
    if _failed(c):
        return
    stage = GaugeMetricFamily(
        "abacus_cutover_stage", "1 for the pipeline's current cutover stage", labels=["stage"]
    )
    for name in STAGES:
        stage.add_metric([name], 1.0 if c["stage"] == name else 0.0)
    yield stage
    yield GaugeMetricFamily("abacus_cutover_epoch", "entries into m1 so far", value=c["epoch"] or 0)
    yield GaugeMetricFamily(
        "abacus_cutover_in_transition",
        "1 while a transition is in progress (or was left part-way)",
        value=1.0 if c["transition"] else 0.0,
    )
    yield GaugeMetricFamily(
        "abacus_cutover_healthy",
        "1 when every component of the stage is healthy",
        value=1.0 if c["healthy"] else 0.0,
    )


def _audits(audits: Any) -> Iterator[Metric]:
    if _failed(audits):
        return
    labels = ["date", "left", "right"]
    outcome = GaugeMetricFamily(
        "abacus_audit_outcome",
        "1 for the outcome of the newest ended full-scope audit of the date and stores",
        labels=[*labels, "outcome"],
    )
    compared = GaugeMetricFamily(
        "abacus_audit_keys_compared", "keys the newest audit compared", labels=labels
    )
    wrong = GaugeMetricFamily(
        "abacus_audit_wrong_keys", "keys where the two stores differed", labels=labels
    )
    drift = GaugeMetricFamily(
        "abacus_audit_net_drift",
        "a store's counts minus the truth's, summed over the date's counters",
        labels=[*labels, "store"],
    )
    for a in audits:
        key = [a["date"], a["left"], a["right"]]
        for name in AUDIT_OUTCOMES:
            outcome.add_metric([*key, name], 1.0 if a["outcome"] == name else 0.0)
        if a["keys_compared"] is not None:
            compared.add_metric(key, a["keys_compared"])
        if a["mismatched"] is not None:
            wrong.add_metric(key, a["mismatched"])
        if a["legacy_drift"] is not None:
            drift.add_metric([*key, a["left"]], a["legacy_drift"])
            drift.add_metric([*key, a["right"]], a["abacus_drift"])
    yield from (outcome, compared, wrong, drift)


def _jobs(jobs: Any) -> Iterator[Metric]:
    if _failed(jobs):
        return
    lag = GaugeMetricFamily(
        "abacus_consumer_lag_messages",
        "messages of the topic a running job's consumer group has not committed yet",
        labels=["group", "topic", "abacus_job"],
    )
    for j in jobs:
        if isinstance(j.get("lag"), int):
            lag.add_metric([j.get("group") or "", j["topic"] or "", j["name"]], j["lag"])
    yield lag


def _legacy(legacy: Any) -> Iterator[Metric]:
    if _failed(legacy):
        return
    for key, name, doc in (
        ("queue_ready", "abacus_legacy_queue_ready_messages", "messages ready in legacy's queue"),
        ("consumers", "abacus_legacy_queue_consumers", "consumers of legacy's queue"),
        ("dead_letters", "abacus_legacy_dead_letter_messages", "messages in legacy's DLQ"),
    ):
        if isinstance(legacy.get(key), int):
            yield GaugeMetricFamily(name, doc, value=legacy[key])
