"""Running legacy workers: in this process (`abacus legacy worker`) or as a subprocess
(`start_worker`, for shadow runs, benchmarks and tests)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from legacy import metrics
from legacy.app import WorkerOptions, make_app
from legacy.chaos import Chaos
from services import procs
from services.procs import Child
from settings import Settings
from settings.logs import JsonFormatter, Redactor, add_redaction, configure_for, secrets_of

log = logging.getLogger(__name__)


class WorkerRegistry:
    """Each worker's state in Redis (`RedisKeys.workers`), so `legacy status` can say at
    once that a worker died of an error Celery cannot recover from (e.g. py-amqp failing to
    decode a message's properties before any task code runs: the message stays first in
    the queue, a legacy flaw), with the reason from its log."""

    def __init__(self, settings: Settings, hostname: str) -> None:
        from legacy.aggregation import redis_client
        from legacy.keys import RedisKeys

        self._client = redis_client(settings, timeout_s=2.0)
        self._key, self.hostname = RedisKeys.of(settings.redis).workers, hostname

    def set(self, state: str, reason: str | None = None) -> None:
        doc = {"state": state, "pid": os.getpid(), "at": time.time(), "reason": reason}
        try:
            self._client.hset(self._key, self.hostname, json.dumps(doc, ensure_ascii=True))
        except Exception:  # Redis down: the worker's own log still says it
            log.warning("could not record worker state %s in Redis", state)

    def warn_without_aof(self) -> None:
        from legacy.status import NO_AOF, redis_aof

        try:
            if redis_aof(self._client) is False:
                log.warning(NO_AOF)
        except Exception:  # Redis down: the tasks' retries will say so
            log.warning("could not ask Redis whether it persists its data")

    def close(self) -> None:
        self._client.close()


class _Unrecoverable(logging.Handler):
    """Catches Celery's 'Unrecoverable error' (CRITICAL) as it is logged, and records it."""

    def __init__(self, registry: WorkerRegistry) -> None:
        super().__init__(logging.CRITICAL)
        self._registry = registry
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        reason = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            reason = f"{reason} ({type(exc).__name__}: {str(exc)[:300]})"
        self.reason = reason[:1000]
        self._registry.set("failed", self.reason)


def run_worker(settings: Settings, options: WorkerOptions) -> int:
    """Run a Celery worker on the legacy queue until it is stopped; its exit code."""
    app = make_app(settings, options)
    hostname = options.hostname or f"legacy-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    json_logs = settings.services.log_format == "json"
    _route_celery_logs(settings, options.loglevel)
    worker = app.Worker(
        hostname=hostname,
        concurrency=options.concurrency,
        pool=options.pool,
        loglevel=options.loglevel,
        queues=[settings.rabbitmq.legacy_queue],
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=not settings.legacy.task_events,  # Flower's "online" needs them
        prefetch_multiplier=options.prefetch_multiplier,
        optimization="fair",
        quiet=json_logs,  # its banner is many lines of text: one event instead (below)
    )
    registry = WorkerRegistry(settings, hostname)
    catcher = _Unrecoverable(registry)
    logging.getLogger("celery").addHandler(catcher)
    if json_logs:
        started = logging.getLogger("legacy.worker.start")
        started.setLevel(logging.INFO)  # what the banner says, whatever the level
        started.info(
            "celery worker %s starting",
            hostname,
            extra={
                "broker": app.connection_for_write().as_uri(),  # masked by kombu (and us)
                "queue": settings.rabbitmq.legacy_queue,
                "concurrency": options.concurrency,
                "pool": options.pool,
            },
        )
    try:
        # before the pool forks: its children write their counts in the exporter's directory
        exporter = metrics.start(settings, hostname, {"worker": hostname})
    except BaseException:
        registry.close()
        raise
    registry.set("running")
    registry.warn_without_aof()
    try:
        worker.start()
    finally:
        if exporter is not None:
            exporter.close()
        code = int(worker.exitcode or 0)
        if catcher.reason is None:
            registry.set(
                "stopped" if code == 0 else "failed", None if code == 0 else f"exit code {code}"
            )
        registry.close()
    return code


def _route_celery_logs(settings: Settings, loglevel: str) -> None:
    """Celery's logs in the settings' format, the settings' secrets masked. JSON: our
    handler on the root logger from now on, and Celery told not to set up its own (a
    `setup_logging` receiver); its shutdown notices (written straight to stdout from the
    signal handler) become events too. Text: Celery's own handlers, as before, each given
    the redaction filter."""
    import celery.apps.worker as celery_worker
    from celery import signals

    if settings.services.log_format == "json":
        configure_for(settings, loglevel)

        def setup(**_: object) -> None:
            configure_for(settings, loglevel)

        signals.setup_logging.connect(setup, weak=False)
        celery_worker.safe_say = _json_say(settings)
        return

    def redact(logger: logging.Logger | None = None, **_: object) -> None:
        if logger is not None:
            add_redaction(logger, settings)

    signals.after_setup_logger.connect(redact, weak=False)
    signals.after_setup_task_logger.connect(redact, weak=False)


def _json_say(settings: Settings) -> Callable[..., None]:
    """Celery's `safe_say` (one raw write, from a signal handler: no logging locks) that
    writes a JSON event instead of a text line."""
    formatter = JsonFormatter(Redactor(secrets_of(settings)))

    def say(msg: str, f: IO[str] | None = None) -> None:
        record = logging.LogRecord(
            "celery.apps.worker", logging.WARNING, __file__, 0, msg, None, None
        )
        out = f or sys.__stderr__
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if out is not None:
                os.write(out.fileno(), (formatter.format(record) + "\n").encode())

    return say


class WorkerProcess(Child):
    """A legacy worker (or Big Bertha flusher) running as a child process."""

    def failure(self) -> str | None:
        """Why the process died, from its log: Celery's 'Unrecoverable error' line, or the
        last line of a traceback; None while it runs or when it said nothing."""
        if self.alive():
            return None
        for line in reversed(self.log_tail(400).splitlines()):
            if "Unrecoverable error" in line:
                return line.strip()
        return super().failure()


def worker_args(options: WorkerOptions) -> list[str]:
    args = [
        "legacy",
        "worker",
        "--concurrency",
        str(options.concurrency),
        "--pool",
        options.pool,
        "--prefetch-multiplier",
        str(options.prefetch_multiplier),
        "--flush-interval-s",
        str(options.flush_interval_s),
        "--loglevel",
        options.loglevel,
        "--chaos-redeliver",
        str(options.chaos.redeliver),
        "--chaos-crash",
        str(options.chaos.crash),
        "--chaos-drop-flush",
        str(options.chaos.drop_flush),
        "--retry-budget-s",
        str(options.retry_budget_s),
        "--redis-timeout-s",
        str(options.redis_timeout_s),
    ]
    if options.trace_dir is not None:
        args += ["--trace-dir", str(options.trace_dir)]
    if options.hostname:
        args += ["--hostname", options.hostname]
    return args


def start_worker(settings: Settings, options: WorkerOptions, log_path: Path) -> WorkerProcess:
    """Start `abacus legacy worker` as a child process with these settings and options;
    its output goes to `log_path`. Stop it with `.stop()`."""
    return _spawn(settings, worker_args(options), log_path)


def _spawn(settings: Settings, args: list[str], log_path: Path) -> WorkerProcess:
    return WorkerProcess(procs.spawn(settings, ["-m", "cli", *args], log_path), log_path)


def start_flusher(
    settings: Settings,
    log_path: Path,
    interval_s: float = 1.0,
    chaos: Chaos | None = None,
    trace_dir: Path | None = None,
) -> WorkerProcess:
    """Start `abacus legacy flush` (Big Bertha as its own service, as it ran in production)
    as a child process; `.stop()` makes it flush once more and exit."""
    args = [
        "legacy",
        "flush",
        "--interval-s",
        str(interval_s),
        "--chaos-drop-flush",
        str((chaos or Chaos()).drop_flush),
        "--chaos-kill-flush",
        str((chaos or Chaos()).kill_flush),
    ]
    if trace_dir is not None:
        args += ["--trace-dir", str(trace_dir)]
    return _spawn(settings, args, log_path)
