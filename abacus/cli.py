"""`abacus job run|status|stop|logs|drained`: the milestone-1 jobs as managed processes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from settings import Settings
from settings.options import log_format, output_format

F = TypeVar("F", bound=Callable[..., Any])


def _name(_: click.Context, param: click.Parameter, value: Any) -> Any:
    """A job name or prefix becomes a file name (state, log, progress directories):
    checked before it reaches a path."""
    from settings.names import check_file_name

    try:
        if isinstance(value, tuple):
            return tuple(check_file_name(v) for v in value)
        return check_file_name(value, empty_ok=param.name == "prefix")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


# a job's knobs that other commands (shadow run, the abacus bench) take too: flag, type, what
_JOB_OPTIONS: dict[str, tuple[str, click.IntRange, str]] = {
    "window_ms": ("--window-ms", click.IntRange(10), "How often the sinks write what they summed"),
    "parallelism": ("--parallelism", click.IntRange(1), "Parallelism of the job"),
    "heap_mb": ("--heap-mb", click.IntRange(256), "JVM heap, MiB"),
    "managed_mb": ("--managed-mb", click.IntRange(64), "Managed memory, MiB: bounds RocksDB"),
}


def job_option(name: str, default: int | None = None, help: str | None = None) -> Callable[[F], F]:
    """One of a job's knobs (window_ms, parallelism, heap_mb, managed_mb): without a default
    the flink setting of that name applies."""
    flag, kind, what = _JOB_OPTIONS[name]
    if help is None:
        help = f"{what} (default: flink.{name})." if default is None else f"{what}."
    return click.option(
        flag, type=kind, default=default, show_default=default is not None, help=help
    )


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@click.group()
def job() -> None:
    """The Abacus Statistic and Customer jobs (PyFlink): run, status, stop, logs."""


@job.command("run")
@click.argument("kind", type=click.Choice(["statistic", "customer"]))
@click.option(
    "--milestone",
    type=click.IntRange(1, 1),
    default=1,
    show_default=True,
    help="1: increments to counter tables (milestone 2 is a separate job).",
)
@click.option(
    "--target",
    type=click.Choice(["shadow", "serving"]),
    default="shadow",
    show_default=True,
    help="The count store the job writes.",
)
@click.option("--foreground", is_flag=True, help="Run in this process (Ctrl-C cancels).")
@click.option(
    "--from-savepoint",
    "from_savepoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Restore from this savepoint or checkpoint directory.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Ignore retained checkpoints (default: resume from the newest one).",
)
@click.option(
    "--prefix",
    default="",
    callback=_name,
    help="Prefix of the job name and consumer group (letters, digits, _ . -).",
)
@click.option(
    "--topic",
    default=None,
    help="The Kafka topic it counts, from its start (default: kafka.topic). A serving job "
    "of the m1 hand-over counts the live topic.",
)
@job_option("window_ms")
@job_option("parallelism")
@click.option(
    "--uniques-ttl-s",
    type=click.IntRange(1),
    default=None,
    help="How long a (counter, customer) pair is remembered for uniques "
    "(default: flink.uniques_ttl_s).",
)
@job_option("heap_mb")
@job_option("managed_mb")
@log_format()
@click.pass_obj
def run(
    settings: Settings,
    kind: str,
    milestone: int,
    target: str,
    foreground: bool,
    from_savepoint: Path | None,
    fresh: bool,
    prefix: str,
    topic: str | None,
    window_ms: int | None,
    parallelism: int | None,
    uniques_ttl_s: int | None,
    heap_mb: int | None,
    managed_mb: int | None,
    log_format: str | None,
) -> None:
    """Start the KIND job (statistic or customer) in the background, or in --foreground."""
    from abacus import manager
    from abacus.environment import Memory
    from settings.logs import configure_for, log_line, with_log_format

    if from_savepoint is not None and fresh:
        raise click.UsageError("--from-savepoint and --fresh exclude each other: pick one")
    options = manager.RunOptions(
        prefix=prefix,
        window_ms=window_ms,
        parallelism=parallelism,
        uniques_ttl_s=uniques_ttl_s,
        memory=Memory(
            heap_mb=heap_mb or settings.flink.heap_mb,
            managed_mb=managed_mb or settings.flink.managed_mb,
        ),
        from_savepoint=from_savepoint,
        resume=not fresh,
        topic=topic,
    )
    settings = with_log_format(settings, log_format)  # the background runner's too
    try:
        if foreground:
            # as before in text (warnings, bare), JSON when asked; secrets masked in both
            configure_for(settings, logging.WARNING, text_format="%(message)s")
            raise SystemExit(manager.run_foreground(settings, kind, target, options))
        state = manager.start(settings, kind, target, options)
    except (manager.JobError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    restored = f", restored from {state.restored_from}" if state.restored_from else ""
    where = f"on {state.remote}" if state.remote else f"pid {state.pid}"
    said = (
        f"{state.name}: {state.status} ({where}, job {state.job_id}, topic {state.topic}{restored})"
    )
    # text: the line as before; JSON: the same line as one event (ts, level, logger, msg)
    click.echo(log_line(settings, "abacus.job", said), nl=False)


@job.command("status")
@output_format("table", "json")
@click.pass_obj
def status(settings: Settings, fmt: str) -> None:
    """Every job this data directory knows, with its process and Flink status: a job that
    FAILED (its restarts used up: flink.restart_attempts) or is restart-looping says so, with
    the reason from its log."""
    from abacus import manager

    states = manager.statuses(settings)
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {
                        **s.to_record(),
                        "condition": manager.describe(s),
                        "restarts_last_minute": manager.recent_restarts(s),
                        "problem": manager.problem(s),
                        "web_ui": manager.web_ui(s),
                        "metrics": manager.metrics_url(s),
                    }
                    for s in states
                ],
                indent=1,
            )
        )
        return
    if not states:
        click.echo("no jobs")
        return
    from rich.console import Console
    from rich.table import Table

    from settings.output import term

    table = Table(
        "job",
        "status",
        "target",
        "pid",
        "flink job",
        "web ui",
        "metrics",
        "since",
        "restarts",
        "savepoint",
        "reason",
    )
    for s in states:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at))
        failing = manager.problem(s) is not None
        table.add_row(
            *(
                term(v)
                for v in (
                    s.name,
                    manager.describe(s),
                    s.target,
                    str(s.pid or ""),
                    s.job_id or "",
                    manager.web_ui(s) or "",
                    manager.metrics_url(s) or "",
                    since,
                    str(s.restarts or ""),
                    s.savepoint or "",
                    s.error if failing or s.restarts else "",
                )
            )
        )
    Console().print(table)


@job.command("stop")
@click.argument("name", callback=_name)
@click.option(
    "--savepoint",
    is_flag=True,
    help="Stop with a savepoint (else cancel; checkpoints are retained either way).",
)
@click.pass_obj
def stop(settings: Settings, name: str, savepoint: bool) -> None:
    """Stop the job NAME (see `abacus job status`)."""
    from abacus import manager

    try:
        state = manager.stop(settings, name, savepoint=savepoint)
    except manager.JobError as exc:
        raise _fail(exc) from None
    click.echo(
        f"{name}: {state.status}" + (f", savepoint {state.savepoint}" if state.savepoint else "")
    )


@job.command("logs")
@click.argument("name", callback=_name)
@click.option("-n", "--lines", type=click.IntRange(1), default=200, show_default=True)
@click.pass_obj
def logs(settings: Settings, name: str, lines: int) -> None:
    """The tail of the job's log (its runner; Flink's own log is beside it)."""
    from abacus import manager

    try:
        click.echo(manager.logs(settings, name, lines))
    except manager.JobError as exc:
        raise _fail(exc) from None


@job.command("drained")
@click.argument("names", nargs=-1, required=True, callback=_name)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0),
    default=0.0,
    help="Wait up to this many seconds for all to drain.",
)
@click.pass_obj
def drained(settings: Settings, names: tuple[str, ...], wait_s: float) -> None:
    """Exit 0 when every NAME has no consumer lag and nothing pending in a window."""
    from abacus import manager

    try:
        if wait_s:
            manager.wait_drained(settings, list(names), wait_s)
        results = [manager.drain_status(settings, n) for n in names]
    except manager.JobError as exc:
        raise _fail(exc) from None
    for r in results:
        click.echo(
            f"{r.name}: {'drained' if r.drained else 'not drained'} (lag {r.lag}, "
            f"increments fanned {r.fanned}, written {r.written})"
        )
    if not all(r.drained for r in results):
        raise SystemExit(1)
