"""Running legacy workers: in this process (`abacus legacy worker`) or as a subprocess
(`start_worker`, for shadow runs, benchmarks and tests)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from legacy.app import WorkerOptions, make_app
from legacy.chaos import Chaos
from settings import Settings

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
    worker = app.Worker(
        hostname=hostname,
        concurrency=options.concurrency,
        pool=options.pool,
        loglevel=options.loglevel,
        queues=[settings.rabbitmq.legacy_queue],
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        prefetch_multiplier=options.prefetch_multiplier,
        optimization="fair",
    )
    registry = WorkerRegistry(settings, hostname)
    catcher = _Unrecoverable(registry)
    logging.getLogger("celery").addHandler(catcher)
    registry.set("running")
    registry.warn_without_aof()
    try:
        worker.start()
    finally:
        code = int(worker.exitcode or 0)
        if catcher.reason is None:
            registry.set(
                "stopped" if code == 0 else "failed", None if code == 0 else f"exit code {code}"
            )
        registry.close()
    return code


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that give a child process exactly these settings (secrets
    included: for a child's environment only, never for printing)."""
    env: dict[str, str] = {}
    for section in type(settings).model_fields:
        value = getattr(settings, section)
        data = value.model_dump(mode="python")
        for name, item in data.items():
            if hasattr(item, "get_secret_value"):
                data[name] = item.get_secret_value()
        env[f"ABACUS_{section.upper()}"] = json.dumps(data, default=str)
    return env


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment for a child that must see exactly `settings`: every other
    ABACUS_* variable (a nested override, ABACUS_CONFIG) is removed, so none can override
    the sections that travel whole."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABACUS_")}
    env.update(settings_env(settings))
    return env


@dataclass
class WorkerProcess:
    """A legacy worker (or Big Bertha flusher) running as a child process."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """Warm shutdown (SIGTERM: finish the running tasks), then kill if it hangs."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def failure(self) -> str | None:
        """Why the process died, from its log: Celery's 'Unrecoverable error' line, or the
        last line of a traceback; None while it runs or when it said nothing."""
        if self.alive():
            return None
        lines = self.log_tail(400).splitlines()
        for line in reversed(lines):
            if "Unrecoverable error" in line:
                return line.strip()
        for i in range(len(lines) - 1, 0, -1):
            if (
                lines[i]
                and not lines[i].startswith((" ", "\t"))
                and any("Traceback" in x for x in lines[:i])
            ):
                return lines[i].strip()
        return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


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
    env = child_env(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return WorkerProcess(process, log_path)


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
    ]
    if trace_dir is not None:
        args += ["--trace-dir", str(trace_dir)]
    return _spawn(settings, args, log_path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total
