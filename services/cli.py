"""`abacus services ...`: parse, call services.manager / services.install, render."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from services import install as installer
from services import manager, procs, targets
from services.base import ServiceError
from services.paths import data_dir
from settings.model import Settings
from settings.options import confirm, output_format
from settings.output import term, visible

NAME = click.Choice(manager.ALL)
EXIT_NOT_RUNNING = 3  # `status`: some service is not running (LSB's "program is not running")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


@click.group()
def services() -> None:
    """Run the local Kafka, Cassandra, RabbitMQ and Redis servers (data in services.data_dir)."""


@services.command()
@click.pass_obj
def install(settings: Settings) -> None:
    """Install the servers: Debian packages, Kafka/Cassandra/Flink-connector jars (idempotent)."""
    try:
        installer.install(settings, say=click.echo)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc


@services.command()
@click.argument("names", nargs=-1, type=NAME)
@click.option(
    "--prometheus",
    "with_prometheus",
    is_flag=True,
    help="Also start Prometheus (scrapes the metrics, evaluates the alert rules; "
    "default: services.prometheus).",
)
@click.pass_obj
def up(settings: Settings, names: tuple[str, ...], with_prometheus: bool) -> None:
    """Start NAMES (default all) and wait until each really serves; no-op for running ones.

    Exits 1 naming the service, its log and its last log lines when one dies or times out,
    or at once when a port is held by a process abacus did not start.
    """
    names = names or manager.default_names(settings)
    if with_prometheus and "prometheus" not in names:
        names = (*names, "prometheus")
    console = Console(stderr=True)
    began = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks = {n: bar.add_task(f"{n}: waiting", total=1) for n in names}

        def progress(name: str, message: str) -> None:
            bar.update(tasks[name], description=visible(f"{name}: {message}"))

        try:
            results = manager.ensure_up(settings, names, progress=progress)
        except ServiceError as exc:
            for task in tasks.values():
                bar.stop_task(task)
            bar.stop()
            raise click.ClickException(str(exc)) from exc
        for result in results:
            what = "already running" if result.already_running else "up"
            if result.restarted:
                dead = [f"stale pid {result.stale_pid}"] if result.stale_pid else []
                if result.leftovers:
                    dead.append(f"ended leftovers {', '.join(map(str, result.leftovers))}")
                what = f"was dead ({'; '.join(dead)}), restarted"
            bar.update(
                tasks[result.name],
                completed=1,
                description=visible(
                    f"{result.name}: {what}, pid {result.pid}, "
                    f"version {result.version} ({result.seconds:.1f} s)"
                ),
            )
    console.print(f"all serving after {time.monotonic() - began:.1f} s")
    console.print(term(f"data in {data_dir(settings)}"))


@services.command()
@click.argument("names", nargs=-1, type=NAME)
@click.option("--purge", is_flag=True, help="Also delete the services' data (not the jars).")
@confirm("Confirm --purge.")
@click.pass_obj
def down(settings: Settings, names: tuple[str, ...], purge: bool, yes: bool) -> None:
    """Stop NAMES (default all): SIGTERM, then SIGKILL after a grace period (said if needed)."""
    chosen = manager.services(settings, names or None)
    if purge and not yes:
        for svc in chosen:
            for path in svc.data_paths():
                click.echo(f"would delete {path}")
        raise click.UsageError("--purge deletes data: add --yes to do it")
    for result in manager.stop(settings, names or None, purge=purge):
        if not result.was_running:
            line = f"{result.name}: not running"
        elif result.killed:
            line = f"{result.name}: did not stop in time, killed (SIGKILL)"
        else:
            line = f"{result.name}: stopped ({result.seconds:.1f} s)"
        click.echo(line + ("; data purged" if result.purged else ""))


@services.command()
@click.argument("names", nargs=-1, type=NAME)
@output_format("table", "json", show_default=False)
@click.pass_obj
def status(settings: Settings, names: tuple[str, ...], fmt: str) -> None:
    """State, address, pid, version, RSS of each server, and the total against the budget.

    State is running (answers a client round trip), unresponsive (our process is alive but
    does not answer), dead (pid file left, process gone) or stopped. Exit code 0 when every
    listed service is running, 3 when one is not, 1 on error.
    """
    report = manager.status(settings, names or None)
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        details = any(s.detail for s in report.services)
        table = Table()
        for column in ("service", "state", "address", "pid", "version", "RSS"):
            table.add_column(column, no_wrap=True)
        if details:
            table.add_column("detail")
        for s in report.services:
            pids = str(s.pid) if s.pid else "-"
            if len(s.pids) > 1:
                pids += f" (+{len(s.pids) - 1})"
            rss = _mib(s.rss_bytes) if s.pids else "-"
            row = [s.name, s.state, s.address, pids, s.version or "-", rss]
            table.add_row(*map(term, row), *([term(s.detail or "")] if details else []))
        Console().print(table)
        verdict = "within" if report.total_rss_bytes <= report.budget_bytes else "OVER"
        click.echo(
            f"total RSS {_mib(report.total_rss_bytes)} ({verdict} the "
            f"{_mib(report.budget_bytes)} budget)"
        )
        click.echo(visible(f"data in {data_dir(settings)}"))
    if not report.all_running:
        sys.exit(EXIT_NOT_RUNNING)


@services.command("targets")
@click.option("--prune", is_flag=True, help="Remove the targets whose process no longer runs.")
@output_format("table", "json", show_default=False)
@click.pass_obj
def targets_(settings: Settings, prune: bool, fmt: str) -> None:
    """The metrics endpoints the running processes announce to Prometheus (file-based
    discovery under the data dir), and whether each process still runs. A dead one stays
    scraped as down (AbacusComponentDown) until `--prune` removes it."""
    found = targets.listed(settings)
    removed = {t.path for t in targets.prune(settings)} if prune else set()
    rows = [
        {
            "kind": t.kind,
            "name": t.name,
            "address": t.address,
            "pid": t.pid,
            "process": "running" if t.alive else ("pruned" if t.path in removed else "gone"),
        }
        for t in found
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for column in ("kind", "name", "address", "pid", "process"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(*(term(str("-" if v is None else v)) for v in r.values()))
    Console().print(table)
    click.echo(visible(f"files in {targets.targets_dir(settings)}"))


@services.command()
@click.argument("name", type=NAME)
@click.option("-n", "lines", type=int, default=50, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@click.pass_obj
def logs(settings: Settings, name: str, lines: int, follow: bool) -> None:
    """Print the last lines of a service's log (<data_dir>/<name>/<name>.out)."""
    (svc,) = manager.services(settings, [name])
    if not svc.log_file.exists():
        raise click.ClickException(f"no log yet: {svc.log_file}")
    for line in procs.tail(svc.log_file, lines):
        click.echo(line)
    if not follow:
        return
    with svc.log_file.open(errors="replace") as handle:
        handle.seek(0, 2)
        try:
            while True:
                line = handle.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            pass
