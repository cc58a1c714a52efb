"""The read API's Prometheus metrics, in a registry of its own (`GET /metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# request latency buckets (seconds): the goal is p99 <= 50 ms
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
