"""`abacus produce` and `abacus legacy worker|flush|status|dead-letters`.

`chaos_options` are legacy's flaws as shares, `worker_options` a worker's pool (a worker's,
the legacy bench's and a shadow run's).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from counting.cli import events_file_option, generator_options
from counting.events import read_lines
from counting.generate import GeneratorConfig, generate
from legacy.app import POOLS, WorkerOptions
from legacy.chaos import Chaos
from legacy.flusher import DEFAULT_INTERVAL_S
from settings import Settings
from settings.options import SHARE, dir_path, log_format, output_format

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_CHAOS_HELP = {
    "redeliver": "Share of tasks requeued after counting (counted twice).",
    "crash": "Share of tasks whose worker process dies between Redis and Cassandra.",
    "drop_flush": "Share of Big Bertha flushes lost.",
    "kill_flush": "Share of Big Bertha batches whose flusher is SIGKILLed between its "
    "Cassandra write and its Redis delete (once per batch).",
}


def chaos_options(
    default: float | None, names: tuple[str, ...] = ("redeliver", "crash", "drop_flush")
) -> Callable[[F], F]:
    """--chaos-redeliver, --chaos-crash, --chaos-drop-flush, --chaos-kill-flush (of `names`):
    the shares of legacy's flaws (`legacy.chaos.Chaos`), parameters chaos_redeliver ...
    chaos_kill_flush."""

    def apply(command: F) -> F:
        for name in reversed(names):
            command = click.option(
                "--chaos-" + name.replace("_", "-"),
                type=SHARE,
                default=default,
                show_default=default is not None,
                help=_CHAOS_HELP[name],
            )(command)
        return command

    return apply


_WORKER_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "concurrency": click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=2,
        show_default=True,
        help="Legacy worker pool processes.",
    ),
    "pool": click.option("--pool", type=click.Choice(POOLS), default="prefork", show_default=True),
    "prefetch_multiplier": click.option(
        "--prefetch-multiplier", type=click.IntRange(min=1), default=16, show_default=True
    ),
}


def worker_options(
    names: tuple[str, ...] = ("concurrency", "pool", "prefetch_multiplier"),
) -> Callable[[F], F]:
    """--concurrency, --pool, --prefetch-multiplier (of `names`): a legacy worker's pool
    (`legacy.app.WorkerOptions`)."""

    def apply(command: F) -> F:
        for name in reversed(names):
            command = _WORKER_OPTIONS[name](command)
        return command

    return apply


_trace_dir = dir_path("--trace-dir", help="Write timing traces here (benchmarks).")


@contextmanager
def _servers(what: str) -> Iterator[None]:
    """Turn a connection failure into one line that says what to fix (no URL, no secret)."""
    import redis
    from cassandra.cluster import NoHostAvailable
    from kombu.exceptions import OperationalError

    from legacy.metrics import MetricsError

    try:
        yield
    except MetricsError as exc:
        raise click.ClickException(f"{what}: {exc}") from None
    except (OperationalError, ConnectionError, OSError, redis.RedisError, NoHostAvailable) as exc:
        raise click.ClickException(
            f"{what}: cannot reach a server ({type(exc).__name__}: {str(exc)[:200]}); "
            "is `abacus services status` all running?"
        ) from None


def _generated(n: int, mix: dict[str, Any], out: IO[str]) -> Iterator[str]:
    config = GeneratorConfig(n=n, **mix)
    for event in generate(config):
        line = json.dumps(event, ensure_ascii=False)
        out.write(line + "\n")
        yield line


def _with_progress(total: int | None, show: bool, run: Callable[[Callable[[int], None]], T]) -> T:
    if not show:
        return run(lambda _n: None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("publish", total=total)
        return run(lambda n: progress.advance(task, n))


@click.command()
@events_file_option(required=False)
@click.option(
    "--generate",
    "n",
    type=click.IntRange(min=0),
    default=None,
    help="Generate N events instead (needs --events-out).",
)
@click.option(
    "--events-out",
    type=click.File("w", encoding="utf-8"),
    default=None,
    help="With --generate: write the generated events here, to recount the run.",
)
@generator_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Events per second (0: as fast as the broker confirms).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@output_format("text", "json")
@click.pass_obj
def produce(
    settings: Settings,
    events_file: IO[bytes] | None,
    n: int | None,
    events_out: IO[str] | None,
    mix: dict[str, Any],
    rate: float,
    progress: bool,
    fmt: str,
) -> None:
    """Publish hydrated events as `legacy.aggregate` Celery task messages (JSON)."""
    from legacy.producer import publish_lines

    if (events_file is None) == (n is None):
        raise click.UsageError("give exactly one of --events FILE or --generate N")
    if n is not None and events_out is None:
        raise click.UsageError("--generate needs --events-out FILE, so the run can be recounted")
    if events_file is not None:
        lines: Any = read_lines(events_file)
        total = None
    else:
        assert events_out is not None
        lines = _generated(n or 0, mix, events_out)
        total = n
    with _servers("produce"):
        report = _with_progress(
            total, progress, lambda advance: publish_lines(settings.rabbitmq, lines, rate, advance)
        )
    summary = {
        **report.summary(),
        "exchange": settings.rabbitmq.exchange,
        "routing_key": settings.rabbitmq.routing_key,
    }
    if fmt == "json":
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"published {report.published} task messages ({report.bytes:,} bytes) to "
            f"exchange {summary['exchange']!r} key {summary['routing_key']!r} in "
            f"{report.elapsed_s:.1f} s ({report.rate:,.0f}/s"
            + (f", target {rate:g}/s" if rate else "")
            + ")"
            + (
                f"; {report.dead_lettered} not-UTF-8 lines dead-lettered"
                if report.dead_lettered
                else ""
            )
        )


@click.group()
def legacy() -> None:
    """The legacy pipeline: Celery workers, Big Bertha flushes, status."""


@legacy.command()
@worker_options()
@click.option(
    "--flush-interval-s",
    type=click.FloatRange(min=0),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Big Bertha flush period in this worker (0: none).",
)
@chaos_options(0.0)
@_trace_dir
@click.option(
    "--loglevel",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
)
@log_format()
@click.option("--hostname", default=None, help="Celery node name (default: unique).")
@click.option(
    "--retry-budget-s",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="How long a task retries a step on transient "
    "Redis/Cassandra errors before it dead-letters the event.",
)
@click.option(
    "--redis-timeout-s",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="Socket timeout of every Redis call.",
)
@click.option(
    "--task-events/--no-task-events",
    default=None,
    help="Send Celery task events and heartbeats, for Flower and `celery events` "
    "(default: the legacy.task_events setting, off).",
)
@click.pass_obj
def worker(
    settings: Settings,
    concurrency: int,
    pool: str,
    prefetch_multiplier: int,
    flush_interval_s: float,
    chaos_redeliver: float,
    chaos_crash: float,
    chaos_drop_flush: float,
    trace_dir: Path | None,
    loglevel: str,
    log_format: str | None,
    hostname: str | None,
    retry_budget_s: float,
    redis_timeout_s: float,
    task_events: bool | None,
) -> None:
    """Run a Celery worker of the aggregation task (Ctrl-C: warm shutdown). Celery's own
    tools reach it through `celery -A legacy.celery_app ...` (see legacy/celery_app.py).
    Serves Prometheus metrics, its pool summed (legacy.metrics_port: 0 a free port, announced
    in the data directory's prometheus/targets; null: off)."""
    from legacy.worker import run_worker
    from settings.logs import with_log_format

    settings = with_log_format(settings, log_format)  # Celery's logs, and the worker's

    if task_events is not None:
        legacy_settings = settings.legacy.model_copy(update={"task_events": task_events})
        settings = settings.model_copy(update={"legacy": legacy_settings})

    options = WorkerOptions(
        concurrency=concurrency,
        pool=pool,
        prefetch_multiplier=prefetch_multiplier,
        flush_interval_s=flush_interval_s,
        chaos=Chaos(chaos_redeliver, chaos_crash, chaos_drop_flush),
        trace_dir=trace_dir,
        loglevel=loglevel.upper(),
        hostname=hostname,
        retry_budget_s=retry_budget_s,
        redis_timeout_s=redis_timeout_s,
    )
    with _servers("legacy worker"):
        code = run_worker(settings, options)
    raise SystemExit(code)


@legacy.command()
@click.option(
    "--interval-s", type=click.FloatRange(min=0.01), default=DEFAULT_INTERVAL_S, show_default=True
)
@click.option("--once", is_flag=True, help="Flush once and exit.")
@log_format()
@chaos_options(0.0, ("drop_flush", "kill_flush"))
@_trace_dir
@click.pass_obj
def flush(
    settings: Settings,
    interval_s: float,
    once: bool,
    log_format: str | None,
    chaos_drop_flush: float,
    chaos_kill_flush: float,
    trace_dir: Path | None,
) -> None:
    """Write Big Bertha's pre-aggregated increments to Cassandra counters, periodically
    (SIGTERM or Ctrl-C: one last flush, then exit; SIGUSR1: chaos, the next batch kills
    the flusher between its write and its delete, as --chaos-kill-flush does). Serves
    Prometheus metrics as a worker does (legacy.metrics_port), except with --once."""
    import os
    import signal
    import socket

    from legacy import metrics
    from legacy.flusher import Flusher
    from legacy.trace import Trace
    from settings.logs import configure_for, with_log_format

    settings = with_log_format(settings, log_format)
    # text as before (warnings, bare); JSON when asked; secrets masked in both
    configure_for(settings, logging.WARNING, text_format="%(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _servers("legacy flush"):
        chaos = Chaos(drop_flush=chaos_drop_flush, kill_flush=chaos_kill_flush)
        flusher = Flusher(settings, chaos, Trace(trace_dir, "flusher"))
        signal.signal(signal.SIGUSR1, lambda *_: flusher.arm_kill())
        exporter = None
        try:
            if not once:  # a long-running flusher serves its metrics (legacy.metrics_port)
                name = f"flusher-{socket.gethostname()}-{os.getpid()}"
                exporter = metrics.start(settings, name, {"flusher": name})
            if once:
                result = flusher.flush_once()
            else:
                try:
                    result = flusher.run(interval_s, stop)
                except KeyboardInterrupt:
                    result = flusher.flush_once()
        finally:
            if exporter is not None:
                exporter.close()
            flusher.close()
    said = f"flushed {result.batches} batch(es), {result.keys} counter keys" + (
        f", {result.dropped} dropped (chaos)" if result.dropped else ""
    )
    if settings.services.log_format == "json":  # its output is one event a line too
        figures = {"batches": result.batches, "keys": result.keys, "dropped": result.dropped}
        result_log = logging.getLogger("legacy.flush")
        result_log.setLevel(logging.INFO)  # the result, as the text format prints it
        result_log.info(said, extra=figures)
    else:
        click.echo(said)


@legacy.command()
@output_format("table", "json")
@click.option(
    "--sample-s",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Measure the processing rate over this interval (0: skip).",
)
@click.pass_obj
def status(settings: Settings, fmt: str, sample_s: float) -> None:
    """Queue depths, unacked tasks, pending pre-aggregates, processed and dead-lettered."""
    from legacy.status import read_status

    with _servers("legacy status"):
        current = read_status(settings, sample_s=sample_s)
    if fmt == "json":
        click.echo(json.dumps(current.to_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    from settings.output import term

    table = Table("what", "value", title="legacy")
    stats = current.stats
    rows = [
        (f"queue {current.queue}", f"{current.ready} ready, {current.consumers} consumers"),
        (
            "legacy workers consume",
            "yes" if current.consuming else "no: paused for the hand-over (`legacy resume`)",
        ),
        (
            "unacked (asked of workers)",
            "unknown" if current.unacked is None else str(current.unacked),
        ),
        (f"dead-letter queue {current.dead_letter_queue}", str(current.dead_letters)),
        (
            "Big Bertha pending increments",
            f"{current.pending_fields} in {current.batches} unfinished batch(es) + pending",
        ),
        ("processed", str(stats.get("processed", 0))),
        (
            "dead-lettered",
            ", ".join(
                [str(stats.get("dead_lettered", 0))]
                + [f"{k[5:]}={v}" for k, v in sorted(stats.items()) if k.startswith("dead:")]
            ),
        ),
        (
            "failed to count (dead-lettered)",
            f"{stats.get('failed', 0)} "
            f"({stats.get('failed_partial', 0)} after their account increments)",
        ),
        (
            "retried (transient errors)",
            f"{stats.get('retried', 0)} retries, "
            f"{stats.get('recovered', 0)} tasks recovered, "
            f"{stats.get('retried_ambiguous', 0)} after a Cassandra timeout",
        ),
        (
            "flushes",
            f"{stats.get('flushes', 0)} ({stats.get('flushed_keys', 0)} keys, "
            f"{stats.get('flush_failures', 0)} failed)",
        ),
        ("rate", "-" if current.rate is None else f"{current.rate:,.1f} tasks/s"),
        ("drained", "yes" if current.drained else "no"),
    ]
    rows += [("chaos", effect) for effect in current.chaos]
    rows += [("PROBLEM", problem) for problem in current.problems]
    for name, value in rows:
        table.add_row(term(name), term(value))
    Console().print(table)


@legacy.command("dead-letters")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@output_format("jsonl", "table")
@click.pass_obj
def dead_letters(settings: Settings, limit: int, fmt: str) -> None:
    """Show the oldest dead letters (left in their queue)."""
    from legacy.deadletter import read

    with _servers("legacy dead-letters"):
        letters = read(settings.rabbitmq, limit)
    from settings.output import visible

    for letter in letters:
        if fmt == "jsonl":  # ASCII: a dead letter's bidi controls or lone surrogates stay escaped
            click.echo(json.dumps(letter))
        else:
            click.echo(
                visible(
                    f"{letter['reason']:<20} {letter.get('event_id') or '-':<24} "
                    f"{letter['detail'][:100]}"
                )
            )


def _timeout_option(command: F) -> F:
    return click.option(
        "--timeout-s",
        type=click.FloatRange(min=1),
        default=None,
        help="How long to wait for the workers (default: cutover.handover_timeout_s).",
    )(command)


@legacy.command()
@output_format("table", "json")
@click.pass_obj
def consumers(settings: Settings, fmt: str) -> None:
    """Who consumes the legacy queue (consumer tags, channels, connections), as RabbitMQ
    says (`rabbitmqctl list_consumers` on the node `abacus services` runs), and whether
    legacy's workers may consume (the hand-over flag)."""
    from legacy.handover import HandoverError, consuming_allowed, queue_consumers

    with _servers("legacy consumers"):
        try:
            found = queue_consumers(settings)
        except HandoverError as exc:
            raise click.ClickException(str(exc)) from None
        allowed = consuming_allowed(settings)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "queue": settings.rabbitmq.legacy_queue,
                    "consuming": "on" if allowed else "off",
                    "consumers": found,
                }
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    from settings.output import term

    click.echo(
        term(
            f"queue {settings.rabbitmq.legacy_queue}: {len(found)} consumer(s); "
            f"legacy's workers may consume: {'yes' if allowed else 'no (paused)'}"
        )
    )
    if not found:
        return
    table = Table("consumer tag", "connection", "channel", "ack", "prefetch")
    for c in found:
        table.add_row(
            term(str(c["consumer_tag"])),
            term(str(c["connection"])),
            str(c["channel_number"]),
            "yes" if c["ack_required"] else "no",
            str(c["prefetch_count"]),
        )
    Console().print(table)


def _handover(
    settings: Settings, what: str, timeout_s: float | None, yes: bool, fmt: str, plan: str
) -> None:
    from legacy import handover

    if not yes:
        click.echo(f"would {plan}; nothing changed (add --yes to do it)")
        return
    call = handover.stop_consuming if what == "pause" else handover.resume_consuming
    with _servers(f"legacy {what}"):
        try:
            report = call(settings, timeout_s or settings.cutover.handover_timeout_s)
        except (TimeoutError, handover.HandoverError) as exc:
            raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(report))
        return
    after = report["after"]
    line = (
        f"legacy consuming {report['consuming']}: queue {report['queue']} has "
        f"{after['consumers']} consumer(s), {after['ready']} ready; "
        f"workers {', '.join(report['workers']) or 'none replied'}; "
        f"{report['elapsed_s']:.1f} s"
    )
    if what == "pause":
        bertha = report["bertha"]
        line += (
            f"; held before: {report['before']['reserved']} reserved, "
            f"{report['before']['active']} active; Big Bertha flushed "
            f"{bertha['keys_flushed']} keys; processed {report['processed']}"
        )
    click.echo(line)


@legacy.command()
@_timeout_option
@click.option("--yes", is_flag=True, help="Do it (without: say what it would do).")
@output_format("text", "json")
@click.pass_obj
def pause(settings: Settings, timeout_s: float | None, yes: bool, fmt: str) -> None:
    """Stop legacy's workers consuming the legacy queue, persistently (a worker started or
    reconnecting later does not consume either), let them finish what they hold, and flush
    Big Bertha empty. `legacy resume` undoes it.

    The cutover (`abacus cutover advance` to m1) is the normal caller; by hand, it holds
    legacy still (events wait in the queue meanwhile)."""
    _handover(
        settings,
        "pause",
        timeout_s,
        yes,
        fmt,
        f"set legacy's consuming flag off, cancel_consumer {settings.rabbitmq.legacy_queue} "
        "on every worker, wait until they hold nothing, and flush Big Bertha empty",
    )


@legacy.command()
@_timeout_option
@click.option("--yes", is_flag=True, help="Do it (without: say what it would do).")
@output_format("text", "json")
@click.pass_obj
def resume(settings: Settings, timeout_s: float | None, yes: bool, fmt: str) -> None:
    """Let legacy's workers consume the legacy queue again (clears the flag, add_consumer).

    The cutover (`abacus cutover rollback` from m1) is the normal caller."""
    _handover(
        settings,
        "resume",
        timeout_s,
        yes,
        fmt,
        "clear legacy's consuming flag and add_consumer "
        f"{settings.rabbitmq.legacy_queue} on every worker",
    )
