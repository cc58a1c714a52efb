"""`abacus shadow run`: both pipelines side by side on the same events, audited."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import click

from abacus.cli import job_option
from legacy.cli import chaos_options, worker_options
from settings import Settings
from settings.options import Failure, dir_path, file_path, log_format, output_format, seed

# `--chaos` alone: every legacy flaw, at shares that show on a few thousand events
CHAOS_PRESET = {"redeliver": 0.02, "crash": 0.002, "drop_flush": 0.05}


@click.group()
def shadow() -> None:
    """Shadow mode: legacy and Abacus on the same events, then a three-way audit."""


@shadow.command("run")
@file_path(
    "--events", "events_file", exists=True, help="JSON Lines file of hydrated events to publish."
)
@click.option(
    "--generate",
    "n",
    type=click.IntRange(min=1),
    default=None,
    help="Publish N generated events (a day, the generator's default mix).",
)
@seed(1, help="With --generate.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=50.0,
    show_default=True,
    help="Events per second published (0: as fast as the broker confirms).",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop publishing after this many seconds (the event log holds what was published).",
)
@click.option(
    "--chaos",
    is_flag=True,
    help="Legacy's flaws on: redeliveries 2%, crashes after the Redis step 0.2%, "
    "dropped Big Bertha flushes 5% (override with --chaos-*).",
)
@chaos_options(None, ("redeliver", "crash", "drop_flush", "kill_flush"))
@worker_options(("concurrency",))
@click.option(
    "--probes-per-s",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Latency probes published per second (0: none).",
)
@job_option("window_ms")
@dir_path(
    "--html-dir", help="Where to write the HTML audit reports (default: the run's directory)."
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Earlier runs kept for inspection; older ones are removed.",
)
@click.option("--drain-timeout-s", type=click.FloatRange(min=10), default=600.0, show_default=True)
@click.option(
    "--services/--no-services",
    default=None,
    help="Start the local servers first (default: yes, unless the settings point at remote ones).",
)
@click.option(
    "--live/--no-live", default=None, help="Live view (default: when stderr is a terminal)."
)
@output_format("table", "json")
@log_format()
@click.pass_obj
def run(
    settings: Settings,
    events_file: Path | None,
    n: int | None,
    seed: int,
    rate: float,
    duration_s: float | None,
    chaos: bool,
    chaos_redeliver: float | None,
    chaos_crash: float | None,
    chaos_drop_flush: float | None,
    chaos_kill_flush: float | None,
    concurrency: int,
    probes_per_s: float,
    window_ms: int | None,
    html_dir: Path | None,
    keep: int,
    drain_timeout_s: float,
    services: bool | None,
    live: bool | None,
    fmt: str,
    log_format: str | None,
) -> None:
    """Run legacy and Abacus side by side on the same events, wait until both drained,
    audit every date touched (legacy vs Abacus vs the truth). Exit 0 when every audit is
    clean, 1 when one is not, 2 on error. Ctrl-C stops what the run started."""
    from rich.console import Console

    from counting.events import read_lines
    from legacy.chaos import Chaos
    from settings.logs import configure_for, log_line, with_log_format
    from shadow.components import JobOptions
    from shadow.run import RunConfig, run_shadow, summary
    from shadow.stream import generated
    from shadow.view import EventLogView, LiveView, LogView, print_result

    if (events_file is None) == (n is None):
        raise click.UsageError("give exactly one of --events FILE or --generate N")
    if html_dir is not None:
        html_dir = html_dir.resolve()

    def lines():  # type: ignore[no-untyped-def]
        if events_file is not None:
            with events_file.open("rb") as stream:
                yield from read_lines(stream)
        else:
            yield from generated(n or 0, seed)

    preset = CHAOS_PRESET if chaos else {}
    knobs = Chaos(
        *(
            given if given is not None else preset.get(name, 0.0)
            for name, given in (
                ("redeliver", chaos_redeliver),
                ("crash", chaos_crash),
                ("drop_flush", chaos_drop_flush),
                ("kill_flush", chaos_kill_flush),
            )
        )
    )
    config = RunConfig(
        lines=lines,
        rate=rate,
        duration_s=duration_s,
        chaos=knobs,
        concurrency=concurrency,
        probes_per_s=probes_per_s,
        html_dir=html_dir,
        keep=keep,
        drain_timeout_s=drain_timeout_s,
        jobs=JobOptions(window_ms=window_ms),
        services=services,
    )
    # the components it starts (workers, flusher, bridge, jobs) get these settings: they
    # log in the same format; its own lines too, unless the live view shows them
    settings = with_log_format(settings, log_format)
    configure_for(settings, logging.WARNING, text_format="%(message)s")
    err = Console(stderr=True)
    live = err.is_terminal if live is None else live
    signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the components like Ctrl-C
    try:
        if live:
            with LiveView(err) as view:
                result = run_shadow(settings, config, view, total=n)
        elif settings.services.log_format == "json":
            result = run_shadow(settings, config, EventLogView(), total=n)
        else:
            result = run_shadow(settings, config, LogView(err), total=n)
    except KeyboardInterrupt:
        said = (
            "shadow run: interrupted; every component it started is stopped "
            "(the servers keep running)"
        )
        click.echo(log_line(settings, "abacus.shadow", said), err=True, nl=False)
        sys.exit(130)
    except Exception as exc:  # a server unreachable, a failed audit: one line, exit 2
        from settings.output import visible

        first = str(exc).splitlines()[0] if str(exc) else ""
        raise Failure(visible(f"shadow run: {type(exc).__name__}: {first}")) from None
    if fmt == "json" and settings.services.log_format == "json":
        # one line, an event too (ts, level, logger, msg, then the result's fields): in a
        # log collector that merges stdout and stderr every line is still one JSON event
        verdict = f"shadow run {result.run_id}: exit {result.exit_code}"
        event = json.loads(log_line(settings, "abacus.shadow", verdict))
        click.echo(json.dumps({**event, **summary(result)}))
    elif fmt == "json":
        click.echo(json.dumps(summary(result), indent=1))
    else:
        print_result(result, sys.stdout)
    sys.exit(result.exit_code)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
