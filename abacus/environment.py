"""The Flink execution environment of a job: thread mode, RocksDB, checkpoints, memory, jars.

Memory is sized explicitly: each local job is one JVM (the PyFlink gateway running a
MiniCluster) with a fixed heap, a fixed managed-memory budget that bounds RocksDB, and the
Python operators in the same process (thread mode).

A local job's metrics (Flink's and the job's own counters) are served for Prometheus by
Flink's Prometheus reporter (`reporter_configuration`), bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from services.paths import flink_kafka_connector_jar, jvm_jar
from settings import Settings


@dataclass(frozen=True, slots=True)
class Memory:
    heap_mb: int = 640
    managed_mb: int = 192  # RocksDB block cache and write buffers
    network_mb: int = 64


def prepare_process(memory: Memory, log_dir: Path | None = None) -> None:
    """Environment of the JVM the gateway launches; call before any pyflink JVM access.

    The virtualenv's bin must come first on PATH for thread mode, and the JVM options fix
    the heap (the MiniCluster would otherwise take a quarter of the machine).
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path
    os.environ["JVM_ARGS"] = (  # beside Flink's default --add-opens options
        f"-Xms{memory.heap_mb}m -Xmx{memory.heap_mb}m -XX:MaxMetaspaceSize=256m "
        "-XX:+UseParallelGC -XX:ParallelGCThreads=2"
    )
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ["FLINK_LOG_DIR"] = str(log_dir)


def prometheus_reporter_jar() -> Path:
    """Flink's Prometheus reporter, shipped in the PyFlink wheel (plugins/metrics-prometheus)."""
    import pyflink

    found = sorted(
        Path(pyflink.__file__).parent.glob(
            "plugins/metrics-prometheus/flink-metrics-prometheus-*.jar"
        )
    )
    if not found:
        raise FileNotFoundError("the PyFlink wheel has no plugins/metrics-prometheus jar")
    return found[-1]


def reporter_configuration(port: int) -> dict[str, str]:
    """A MiniCluster's Prometheus reporter on 127.0.0.1:`port` (`abacus.sink.
    BoundPrometheusReporterFactory` in abacus/jvm: Flink's reporter, whose own factory binds
    every interface). The MiniCluster loads no plugin (plugins/ is ignored: no factory is
    found there); it finds reporter factories on the class loader of the thread that starts
    it, which holds the job's pipeline.jars: the reporter's jar (`prometheus_reporter_jar`)
    goes there, beside the jobs' jar. Label values are kept as they are (`job_name` is the
    Flink job name, `abacus-statistic`, not `abacus_statistic`)."""
    prefix = "metrics.reporter.prom."
    return {
        prefix + "factory.class": "abacus.sink.BoundPrometheusReporterFactory",
        prefix + "host": "127.0.0.1",
        prefix + "port": str(port),
        prefix + "filterLabelValueCharacters": "false",
    }


def job_jars(settings: Settings) -> list[str]:
    """The jars every job needs: the Kafka connector and the jobs' Java code. Resolved on the
    machine that submits (the Java code's jar is named by a digest of its sources)."""
    return [flink_kafka_connector_jar(settings).as_uri(), jvm_jar(settings).as_uri()]


def configuration(
    settings: Settings,
    name: str,
    parallelism: int,
    memory: Memory,
    restore_from: Path | None,
    checkpoint_dir: Path,
    jars: list[str],
    metrics_port: int | None = None,
) -> Configuration:
    """The job's Flink configuration; with `metrics_port`, a Prometheus reporter there
    (local jobs: a remote cluster's own reporter configuration applies to its jobs)."""
    flink = settings.flink
    conf = Configuration()
    python = sys.executable
    values = {
        "python.execution-mode": "thread",
        "pipeline.object-reuse": "true",  # no copies between chained operators
        "python.executable": python,
        "python.client.executable": python,
        "parallelism.default": str(parallelism),
        "pipeline.name": f"abacus-{name}",
        "pipeline.jars": ";".join(jars),
        "state.backend.type": "rocksdb",
        "execution.checkpointing.incremental": "true",
        "state.backend.rocksdb.memory.managed": "true",
        "state.backend.rocksdb.use-bloom-filter": "true",
        "execution.checkpointing.dir": checkpoint_dir.as_uri(),
        "execution.checkpointing.interval": f"{flink.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "execution.checkpointing.timeout": "10 min",
        "execution.checkpointing.min-pause": "500 ms",
        "taskmanager.memory.managed.size": f"{memory.managed_mb}m",
        "taskmanager.memory.network.min": f"{memory.network_mb}m",
        "taskmanager.memory.network.max": f"{memory.network_mb}m",
        "taskmanager.numberOfTaskSlots": str(max(parallelism, 1)),
        "execution.buffer-timeout.interval": "20 ms",
        "rest.bind-port": "0",  # a free port, written to the job's state file
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
    }
    values.update(restart_strategy(settings))
    if metrics_port is not None:
        values.update(reporter_configuration(metrics_port))
        values["pipeline.jars"] = ";".join([*jars, prometheus_reporter_jar().as_uri()])
    if restore_from is not None:
        values["execution.state-recovery.path"] = str(restore_from)
    for key, value in values.items():
        conf.set_string(key, value)
    return conf


def restart_strategy(settings: Settings) -> dict[str, str]:
    """Bounded restarts (flink.restart_*): a job that keeps failing ends FAILED, with its
    reason, instead of restarting forever (a poison record or a dead sink would otherwise
    keep it RESTARTING, unnoticed)."""
    flink = settings.flink
    if flink.restart_attempts == 0:
        return {"restart-strategy.type": "none"}
    prefix = "restart-strategy.exponential-delay."
    max_delay_s = max(flink.restart_max_delay_s, flink.restart_delay_s)
    return {
        "restart-strategy.type": "exponential-delay",
        prefix + "initial-backoff": f"{round(flink.restart_delay_s * 1000)} ms",
        prefix + "max-backoff": f"{round(max_delay_s * 1000)} ms",
        prefix + "backoff-multiplier": "2.0",
        prefix + "attempts-before-reset-backoff": str(flink.restart_attempts),
        prefix + "reset-backoff-threshold": f"{round(flink.restart_reset_s * 1000)} ms",
    }


def local_environment(conf: Configuration) -> StreamExecutionEnvironment:
    return StreamExecutionEnvironment.get_execution_environment(conf)
