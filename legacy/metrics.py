"""A legacy process's Prometheus metrics: a worker's pool summed, Big Bertha's flusher.

`abacus legacy worker` (and `abacus legacy flush`, Big Bertha as its own service) serves
its metrics on `legacy.metrics_host:legacy.metrics_port` (0: a free port; None: off) and
announces the endpoint to the local Prometheus (`services.targets`, kind `legacy`) until it
stops. A prefork worker counts in its pool's children: prometheus_client's multiprocess
mode sums them. `start` makes a fresh private directory under the data directory
(`<data_dir>/legacy-metrics/<pid>-<random>`), points PROMETHEUS_MULTIPROC_DIR at it before
the pool forks, and serves a `MultiProcessCollector` over it from the main process; each
process writes its own files there, a child that exits is marked dead (its live gauges
leave the sum, its counts stay: they happened), and `Exporter.close` removes the directory.
Counts are per worker lifetime: a restarted worker starts from zero in a new directory
(Prometheus' `rate`/`increase` take counter resets in their stride); the directory of a
worker that was killed is removed by the next worker started on the same data directory.

Exported (tasks are counted where they run, letters where they are published):

- `abacus_legacy_tasks_total{outcome}`: task executions by outcome, each exactly one of
  `done` (counted at once), `retried` (counted after retrying a step on transient
  errors), `failed` (gave up: dead-lettered as redis_error, cassandra_error or task_error),
  `dead_lettered` (an invalid event or a malformed task: dead-lettered with its reason),
  `requeued` (neither counted nor dead-lettered: requeued). A chaos redelivery is `done`.
- `abacus_legacy_dead_lettered_total{reason}`: every dead letter a worker published, by
  the reasons of `legacy.deadletter` (the contract's for invalid events, the message
  reasons, the failure reasons); a message screened out by the consumer never became a
  task, so it is counted here only.
- `abacus_legacy_step_retries_total{step}`: retries of a task's `redis` or `cassandra`
  step (each attempt after a transient error).
- `abacus_legacy_counter_rows_written_total{level}`: counter rows written to the legacy
  store: `customer` by tasks, `account` by Big Bertha's flushes.
- `abacus_legacy_tasks_in_progress`: tasks running now (the pool's live processes summed).
- Where a Big Bertha flusher runs (a worker's flush thread, `abacus legacy flush`):
  `abacus_legacy_bertha_flushes_total{outcome}` (`ok`, `failed`: each flush run),
  `abacus_legacy_bertha_batches_total{outcome}` (`written`, `dropped` by chaos),
  `abacus_legacy_bertha_flush_duration_seconds` (a histogram of flush runs that had work),
  and, read when scraped: `abacus_legacy_bertha_pending_keys` (account keys in Big Bertha
  not yet in Cassandra: the pending hash and every unfinished batch),
  `abacus_legacy_bertha_unfinished_batches` (batches taken and not done) and
  `abacus_legacy_bertha_flush_age_seconds` (since the last successful flush run, or since
  the flusher started when none succeeded yet).

Every call here does nothing in a process whose metrics are off (a test's in-process
Aggregator, `abacus legacy flush --once`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counting import Reason
from legacy.deadletter import FAILURE_REASONS, MESSAGE_REASONS
from services import procs, targets
from services.paths import data_dir
from settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
TASK_OUTCOMES = ("done", "retried", "failed", "dead_lettered", "requeued")
DEAD_LETTER_REASONS = tuple(
    dict.fromkeys([*(r.value for r in Reason), *MESSAGE_REASONS, *FAILURE_REASONS])
)
STEPS = ("redis", "cassandra")
LEVELS = ("customer", "account")
FLUSH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REDIS_TIMEOUT_S = 2.0  # a scrape must not hang on Redis
_DIR_NAME = re.compile(r"^(\d+)-")
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


class MetricsError(Exception):
    """The metrics endpoint cannot be served (its port is taken, its host unknown)."""


# -- pure helpers ---------------------------------------------------------------------------


def metrics_root(settings: Settings) -> Path:
    """Where each legacy process's private multiprocess directory is made."""
    return data_dir(settings) / "legacy-metrics"


def owner_pid(directory_name: str) -> int | None:
    """The pid a multiprocess directory was made by (`<pid>-<random>`), None if not ours."""
    match = _DIR_NAME.match(directory_name)
    return int(match.group(1)) if match else None


def live_file_pid(file_name: str) -> int | None:
    """The pid of a live gauge's file (`gauge_livesum_<pid>.db`...), None for other files."""
    match = _LIVE_FILE.match(file_name)
    return int(match.group(1)) if match else None


def stale_dirs(names: Iterable[str], alive: Any = procs.alive) -> list[str]:
    """The multiprocess directories whose process is gone (killed before it removed its own)."""
    return [n for n in names if (pid := owner_pid(n)) is not None and not alive(pid)]


def dead_writers(names: Iterable[str], alive: Any = procs.alive, me: int | None = None) -> set[int]:
    """Pids with live-gauge files whose process is gone (a pool child killed or crashed)."""
    me = os.getpid() if me is None else me
    pids = {pid for n in names if (pid := live_file_pid(n)) is not None}
    return {pid for pid in pids if pid != me and not alive(pid)}


# -- the metrics of this process ------------------------------------------------------------


class _Metrics:
    """The metric objects one process writes (to its own files in the multiprocess
    directory: they are registered nowhere, the main process's collector reads the files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, registry=None)

        self.tasks = counter("abacus_legacy_tasks", "Task executions by outcome.", ("outcome",))
        self.dead_lettered = counter(
            "abacus_legacy_dead_lettered", "Dead letters published, by reason.", ("reason",)
        )
        self.step_retries = counter(
            "abacus_legacy_step_retries",
            "Retries of a task's step after a transient error.",
            ("step",),
        )
        self.rows = counter(
            "abacus_legacy_counter_rows_written",
            "Counter rows written to the legacy store, by level.",
            ("level",),
        )
        self.in_progress = Gauge(
            "abacus_legacy_tasks_in_progress",
            "Tasks running now.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.bertha: _BerthaMetrics | None = None  # made when a flusher starts here

    def zeros(self) -> None:
        """Every known label value at 0, so a series exists before its first event."""
        for outcome in TASK_OUTCOMES:
            self.tasks.labels(outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        for step in STEPS:
            self.step_retries.labels(step)
        for level in LEVELS:
            self.rows.labels(level)


class _BerthaMetrics:
    """What a Big Bertha flusher writes (only a process that runs one has them)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.flushes = Counter(
            "abacus_legacy_bertha_flushes",
            "Big Bertha flush runs by outcome.",
            ("outcome",),
            registry=None,
        )
        self.batches = Counter(
            "abacus_legacy_bertha_batches",
            "Big Bertha batches by outcome.",
            ("outcome",),
            registry=None,
        )
        self.duration = Histogram(
            "abacus_legacy_bertha_flush_duration_seconds",
            "Big Bertha flush runs that had work, their duration.",
            registry=None,
            buckets=FLUSH_BUCKETS_S,
        )
        for outcome in ("ok", "failed"):
            self.flushes.labels(outcome)
        for outcome in ("written", "dropped"):
            self.batches.labels(outcome)


@dataclass
class _FlushClock:
    started_s: float
    last_ok_s: float | None = None

    def age_s(self, now_s: float) -> float:
        return max(0.0, now_s - (self.last_ok_s or self.started_s))


_metrics: _Metrics | None = None
_clock: _FlushClock | None = None


def enabled() -> bool:
    return _metrics is not None


def task(outcome: str) -> None:
    if _metrics is not None:
        _metrics.tasks.labels(outcome).inc()


def dead_lettered(reason: str) -> None:
    if _metrics is not None:
        _metrics.dead_lettered.labels(reason).inc()


def step_retried(step: str) -> None:
    if _metrics is not None:
        _metrics.step_retries.labels(step).inc()


def rows_written(level: str, n: int) -> None:
    if _metrics is not None and n:
        _metrics.rows.labels(level).inc(n)


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Around one task: counted in `abacus_legacy_tasks_in_progress` while it runs."""
    gauge = _metrics.in_progress if _metrics is not None else None
    if gauge is not None:
        gauge.inc()
    try:
        yield
    finally:
        if gauge is not None:
            gauge.dec()


def flusher_started() -> None:
    """A Big Bertha flusher runs in this process from now on (its gauges are exported)."""
    global _clock
    if _metrics is not None and _clock is None:
        _metrics.bertha = _BerthaMetrics()
        _clock = _FlushClock(time.time())


def flushed(ok: bool, duration_s: float, had_work: bool) -> None:
    """One flush run ended (`ok`: without an error)."""
    bertha = _metrics.bertha if _metrics is not None else None
    if bertha is None:
        return
    bertha.flushes.labels("ok" if ok else "failed").inc()
    if had_work:
        bertha.duration.observe(duration_s)
    if ok and _clock is not None:
        _clock.last_ok_s = time.time()


def batch_flushed(dropped: bool = False) -> None:
    """A batch was written whole (its rows are counted as each window is confirmed) or
    dropped (chaos)."""
    if _metrics is not None and _metrics.bertha is not None:
        _metrics.bertha.batches.labels("dropped" if dropped else "written").inc()


# -- serving them ---------------------------------------------------------------------------


class _Collector:
    """What the main process serves: every process's files summed, and Big Bertha's gauges
    when a flusher runs here."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self._directory, self._settings = directory, settings
        self._lock = threading.Lock()  # scrapes are served by threads: one at a time
        self._bertha: Any = None
        self._redis: Any = None
        self._redis_failing = False

    def collect(self) -> Iterator[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        with self._lock:
            for pid in dead_writers(os.listdir(self._directory)):
                mark_process_dead(pid, str(self._directory))
            yield from MultiProcessCollector(None, str(self._directory)).collect()
            if _clock is not None:
                yield from self._bertha_gauges(_clock)

    def _bertha_gauges(self, clock: _FlushClock) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "abacus_legacy_bertha_flush_age_seconds",
            "Seconds since the last successful Big Bertha flush run (or the flusher's start).",
            value=clock.age_s(time.time()),
        )
        try:
            bertha = self._open_bertha()
            pending, batches = bertha.pending_keys(), len(list(bertha.batch_ids()))
        except Exception as exc:  # Redis down: the gauges are absent, the rest is served
            if not self._redis_failing:
                log.warning("metrics: cannot read Big Bertha from Redis (%s)", type(exc).__name__)
            self._redis_failing = True
            return
        self._redis_failing = False
        yield GaugeMetricFamily(
            "abacus_legacy_bertha_pending_keys",
            "Account keys in Big Bertha not yet written to Cassandra.",
            value=pending,
        )
        yield GaugeMetricFamily(
            "abacus_legacy_bertha_unfinished_batches",
            "Big Bertha batches taken by a flusher and not done.",
            value=batches,
        )

    def _open_bertha(self) -> Any:
        if self._bertha is None:
            import redis

            from legacy.bertha import BigBertha
            from legacy.keys import RedisKeys

            self._redis = redis.Redis(
                **self._settings.redis.client_kwargs(),
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
            self._bertha = BigBertha(self._redis, RedisKeys.of(self._settings.redis))
        return self._bertha

    def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()


@dataclass
class Exporter:
    """A running metrics endpoint; `close()` when the process stops."""

    directory: Path
    address: str
    target: Path
    _server: Any
    _collector: _Collector

    def close(self) -> None:
        """Unannounce, stop serving, forget the metrics and remove the directory."""
        global _metrics, _clock
        targets.unregister(self.target)
        self._server.shutdown()
        self._server.server_close()
        self._collector.close()
        _metrics = _clock = None
        _multiprocess(False)
        if os.environ.get(MULTIPROC_VAR) == str(self.directory):
            del os.environ[MULTIPROC_VAR]
        shutil.rmtree(self.directory, ignore_errors=True)


def start(settings: Settings, name: str, labels: dict[str, str]) -> Exporter | None:
    """Serve this process's metrics (and its future children's) and announce the endpoint
    as `legacy-<name>`; None when `legacy.metrics_port` is None. Call before the pool
    forks."""
    global _metrics
    if settings.legacy.metrics_port is None:
        return None
    root = metrics_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    for stale in stale_dirs(p.name for p in root.iterdir()):
        shutil.rmtree(root / stale, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    try:
        os.environ[MULTIPROC_VAR] = str(directory)  # the pool's children inherit it
        _multiprocess(True)
        _metrics = _Metrics()
        _metrics.zeros()
        _connect_pool_signals()
        collector = _Collector(directory, settings)
        server, address = _serve(settings, collector)
    except BaseException:
        _metrics = None
        _multiprocess(False)
        os.environ.pop(MULTIPROC_VAR, None)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    target = targets.register(settings, "legacy", name, address, labels)
    log.info("legacy metrics on http://%s/metrics", address)
    return Exporter(directory, address, target, server, collector)


def _serve(settings: Settings, collector: _Collector) -> tuple[Any, str]:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # a Collector by duck typing
    host, port = settings.legacy.metrics_host, settings.legacy.metrics_port or 0
    for attempt in range(3):  # a free port can be taken between the pick and the bind
        chosen = port or targets.free_port(host)
        try:
            server, _thread = start_http_server(chosen, addr=host, registry=registry)
        except OSError as exc:
            if port or attempt == 2:
                raise MetricsError(
                    f"cannot serve legacy metrics on {targets.address(host, chosen)} "
                    f"(legacy.metrics_host/metrics_port): {exc}"
                ) from exc
            continue
        return server, targets.address(host, chosen)
    raise AssertionError("unreachable")


def _multiprocess(on: bool) -> None:
    """prometheus_client's value class: file-backed per process (multiprocess mode) or not.
    Chosen from the environment when prometheus_client is first imported, which may have
    happened before `start`: set here explicitly, before any metric is made."""
    from prometheus_client import values

    if on:
        values.ValueClass = values.MultiProcessValue()
    else:
        with contextlib.suppress(AttributeError):
            values.ValueClass.close_all_files()
        values.ValueClass = values.MutexValue


def after_fork() -> None:
    """In a pool child: its own value class and metrics (nothing inherited from the main
    process, not even a lock another thread held while the child was forked)."""
    global _metrics, _clock
    if _metrics is not None:
        _multiprocess(True)
        _metrics = _Metrics()
        _clock = None  # the flusher runs in the main process


def _child_exits() -> None:
    from prometheus_client.multiprocess import mark_process_dead

    directory = os.environ.get(MULTIPROC_VAR)
    if _metrics is not None and directory:
        mark_process_dead(os.getpid(), directory)


def _connect_pool_signals() -> None:
    from celery import signals

    signals.worker_process_init.connect(
        lambda **_: after_fork(), weak=False, dispatch_uid="abacus-legacy-metrics-init"
    )
    signals.worker_process_shutdown.connect(
        lambda **_: _child_exits(), weak=False, dispatch_uid="abacus-legacy-metrics-exit"
    )
