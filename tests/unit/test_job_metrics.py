"""A local job's Prometheus reporter: its configuration, its port, where job status says it
is (no JVM, no server: tests/integration/test_job_metrics.py runs a job and scrapes it)."""

from __future__ import annotations

import os
import zipfile

from abacus.environment import prometheus_reporter_jar, reporter_configuration
from abacus.manager import metrics_url
from abacus.runner import _metrics_port
from abacus.state import JobState
from settings.model import Settings


def _job(**changes: object) -> JobState:
    base = JobState(
        name="j", kind="statistic", target="shadow", pid=os.getpid(), status="RUNNING", started_at=0
    )
    return base.replace(**changes)


def test_the_reporter_is_ours_bound_to_loopback_with_unfiltered_labels() -> None:
    conf = reporter_configuration(41234)
    assert conf == {
        "metrics.reporter.prom.factory.class": "abacus.sink.BoundPrometheusReporterFactory",
        "metrics.reporter.prom.host": "127.0.0.1",
        "metrics.reporter.prom.port": "41234",
        "metrics.reporter.prom.filterLabelValueCharacters": "false",
    }


def test_the_wheel_ships_flinks_reporter_that_ours_extends() -> None:
    with zipfile.ZipFile(prometheus_reporter_jar()) as jar:
        names = set(jar.namelist())
    assert "org/apache/flink/metrics/prometheus/AbstractPrometheusReporter.class" in names
    assert "io/prometheus/client/exporter/HTTPServer.class" in names


def test_the_port_comes_from_the_settings_zero_is_a_free_one() -> None:
    def with_port(port: int | None) -> Settings:
        settings = Settings()
        return settings.model_copy(
            update={"flink": settings.flink.model_copy(update={"metrics_port": port})}
        )

    assert _metrics_port(with_port(None)) is None
    assert _metrics_port(with_port(19249)) == 19249
    free = _metrics_port(with_port(0))
    assert free is not None and 1024 <= free <= 65535


def test_job_status_names_a_running_local_jobs_metrics() -> None:
    assert metrics_url(_job(metrics_port=41234)) == "http://127.0.0.1:41234/metrics"
    assert metrics_url(_job(metrics_port=41234, status="RESTARTING")) is not None
    assert metrics_url(_job(metrics_port=None)) is None  # no reporter, or not announced
    assert metrics_url(_job(metrics_port=41234, status="CANCELED")) is None  # it is gone
    assert metrics_url(_job(metrics_port=41234, remote="flink-jm:8081")) is None
