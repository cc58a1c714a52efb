"""The Celery app of the legacy pipeline: JSON only, acks late, one task per event.

`make_app(settings, options)` builds an isolated app (its own queue names, control
exchange and Redis prefix come from the settings), registers the aggregation task,
the Big Bertha flush as a worker bootstep and the hand-over flag as a consumer bootstep
(`legacy.consuming`), and installs the dead-lettering consumer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from celery import Celery, bootsteps
from celery.exceptions import Reject

from legacy import deadletter, metrics
from legacy.aggregation import REDIS_TIMEOUT_S, Aggregator, Outcome, count_stats
from legacy.chaos import Chaos
from legacy.consuming import ConsumingFlagStep
from legacy.flusher import DEFAULT_INTERVAL_S, start_flush_thread
from legacy.retry import RetryPolicy
from legacy.topology import legacy_queue
from legacy.trace import Trace
from settings import Settings
from wire.task import TASK_NAME, arguments_problem

log = logging.getLogger(__name__)

POOLS = ("prefork", "threads", "solo")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a legacy worker runs (the CLI flags of `abacus legacy worker`)."""

    concurrency: int = 2
    pool: str = "prefork"
    prefetch_multiplier: int = 16
    flush_interval_s: float = DEFAULT_INTERVAL_S  # 0: no flusher inside this worker
    chaos: Chaos = field(default_factory=Chaos)
    trace_dir: Path | None = None
    loglevel: str = "WARNING"
    hostname: str | None = None
    retry_budget_s: float = RetryPolicy().budget_s  # per step, on transient errors
    redis_timeout_s: float = REDIS_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.retry_budget_s < 0 or self.redis_timeout_s <= 0:
            raise ValueError("retry budget must be >= 0 and the Redis timeout > 0")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.concurrency < 1 or self.prefetch_multiplier < 1:
            raise ValueError("concurrency and prefetch multiplier must be >= 1")
        if self.flush_interval_s < 0:
            raise ValueError("flush interval must be >= 0 (0 disables the flusher)")


class Runtime:
    """What the worker processes share: settings, options, and a per-process Aggregator."""

    def __init__(self, app: Celery, settings: Settings, options: WorkerOptions) -> None:
        self.app, self.settings, self.options = app, settings, options
        self._lock = threading.Lock()
        self._aggregator: Aggregator | None = None
        self._pid = -1

    def aggregator(self) -> Aggregator:
        if self._pid != os.getpid():  # first task of a (forked) process
            with self._lock:
                if self._pid != os.getpid():
                    self._aggregator = Aggregator(
                        self.settings,
                        self.options.chaos,
                        self.dead_letter,
                        Trace(self.options.trace_dir, "worker"),
                        RetryPolicy(budget_s=self.options.retry_budget_s),
                        self.options.redis_timeout_s,
                    )
                    self._pid = os.getpid()
        assert self._aggregator is not None
        return self._aggregator

    def dead_letter(self, letter: dict[str, Any]) -> None:
        with self.app.producer_or_acquire() as producer:
            deadletter.publish(producer, self.settings.rabbitmq, letter)
        metrics.dead_lettered(str(letter.get("reason")))

    def handle(self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        with metrics.running():
            return self._handle(request, args, kwargs)

    def _handle(self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            aggregator = self.aggregator()
        except Exception as exc:  # Cassandra unreachable at the process's first task
            log.exception("legacy task %s: cannot open the counter store; requeued", request.id)
            metrics.task("requeued")
            time.sleep(1.0)
            raise Reject(f"{type(exc).__name__}: requeued", requeue=True) from exc
        if problem := arguments_problem(args, kwargs):
            aggregator.reject(deadletter.BAD_TASK_MESSAGE, problem, args, None, request.id)
            return Outcome.DEAD_LETTERED.value
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        try:
            outcome = aggregator.aggregate(args[0], request.id, redelivered)
        except Exception as exc:
            # Not even its dead letter could be written (RabbitMQ refused it): requeued, so
            # nothing is acked into oblivion; counted, and slowed down so it cannot spin.
            log.exception(
                "legacy task %s: could not count nor dead-letter it; requeued", request.id
            )
            count_stats(aggregator.redis, aggregator.keys, {"requeued": 1}, RetryPolicy(budget_s=0))
            metrics.task("requeued")
            time.sleep(1.0)
            raise Reject(f"{type(exc).__name__}: requeued", requeue=True) from exc
        if outcome is Outcome.REDELIVER:
            raise Reject("chaos: redeliver after counting", requeue=True)
        return outcome.value


class BigBerthaFlushStep(bootsteps.StartStopStep):
    """Runs the Big Bertha flush in a thread of the worker's main process."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None

    def start(self, worker: Any) -> None:
        runtime: Runtime = worker.app.abacus_runtime
        options = runtime.options
        if options.flush_interval_s > 0:
            self._thread, self._stop = start_flush_thread(
                runtime.settings,
                options.flush_interval_s,
                options.chaos,
                Trace(options.trace_dir, "flusher"),
            )

    def stop(self, worker: Any) -> None:
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=60)
            self._stop = self._thread = None


def control_exchange(settings: Settings) -> str:
    """Each legacy installation (each test) has its own remote-control exchange."""
    return "abacus." + settings.rabbitmq.legacy_queue


def event_exchange(settings: Settings) -> str:
    """Where the workers send their task events (when `legacy.task_events` is on)."""
    return control_exchange(settings) + ".events"


def make_app(settings: Settings, options: WorkerOptions | None = None) -> Celery:
    options = options or WorkerOptions()
    app = Celery("legacy", set_as_current=False)
    app.conf.update(
        broker_url=settings.rabbitmq.url(),
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,  # a crash redelivers: the flaw we keep
        task_reject_on_worker_lost=True,  # ... also when a pool process dies
        worker_prefetch_multiplier=options.prefetch_multiplier,
        task_queues=[legacy_queue(settings.rabbitmq)],
        task_default_queue=settings.rabbitmq.legacy_queue,
        task_create_missing_queues=False,
        control_exchange=control_exchange(settings),
        # task events (for Flower and `celery events`) only when legacy.task_events is on:
        # on their own exchange, so each installation (each test) sees only its own workers
        event_exchange=event_exchange(settings),
        worker_send_task_events=settings.legacy.task_events,
        task_send_sent_event=settings.legacy.task_events,
        worker_consumer="legacy.consumer:DeadLetteringConsumer",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    app.abacus_runtime = Runtime(app, settings, options)

    @app.task(name=TASK_NAME, bind=True)
    def aggregate(self: Any, *args: Any, **kwargs: Any) -> str:
        return app.abacus_runtime.handle(self.request, args, kwargs)

    app.steps["worker"].add(BigBerthaFlushStep)
    app.steps["consumer"].add(ConsumingFlagStep)  # the hand-over flag, on every (re)connect
    return app
