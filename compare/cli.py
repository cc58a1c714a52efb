"""`abacus compare`, `abacus dump`, `abacus audits list|show|gate|run`.

Exit codes of compare (and of `audits show`, `audits gate`, `audits run`): 0 clean (within
tolerance), 1 outside tolerance, 2 on error (a wrong argument, an unreachable server, a failed
audit).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from compare.audit import AuditError, AuditResult, Progress, RunOptions
from compare.diff import Tolerance
from compare.report import FORMATS, headline, render
from settings import Settings
from settings.options import Failure, dir_path, file_path, output_format
from settings.output import term, visible
from storage import STORES

_STORE = click.Choice(list(STORES))
_LEVEL = click.Choice(["account", "customer", "both"])


def _date(_: Any, param: click.Parameter, value: str | None) -> str | None:
    from datetime import date

    if value is None:
        return None
    try:
        if date.fromisoformat(value).isoformat() == value:
            return value
    except ValueError:
        pass
    raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param=param)


def _truth(_: Any, param: click.Parameter, value: str) -> str:
    if value in ("none", "kafka") or Path(value).is_file():
        return value
    raise click.BadParameter(f"{value!r} is neither none, kafka nor an existing file", param=param)


def _audit_id(_: Any, param: click.Parameter, value: str | None) -> str | None:
    """An audit id names its work directory: checked before it reaches a path."""
    from settings.names import check_file_name

    if value is None:
        return None
    try:
        return check_file_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _levels(level: str) -> tuple[str, ...]:
    return ("account", "customer") if level == "both" else (level,)


@contextmanager
def _output(out: Path | None) -> Iterator[IO[str]]:
    if out is None:
        yield sys.stdout
        return
    with out.open("w", encoding="utf-8") as stream:
        yield stream


@contextmanager
def _failures() -> Iterator[None]:
    """Turn the errors of a run into one line and exit code 2 (never a traceback)."""
    try:
        yield
    except (AuditError, LookupError, TimeoutError, OSError) as exc:
        raise Failure(visible(exc)) from None
    except click.ClickException:
        raise
    except Exception as exc:  # driver errors: name them, never print settings or secrets
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise Failure(visible(f"{type(exc).__name__}: {first}")) from None


def _progress(enabled: bool) -> tuple[Callable[[int, int], None] | None, Any]:
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    )
    task = bar.add_task("units", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar


def _run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How an audit runs, the same options for compare and `audits run`: the command gets
    them as `options: RunOptions`, with `kafka_skew_s` and `progress` (the bar) apart."""
    from functools import wraps

    @wraps(command)
    def with_options(
        *args: Any,
        concurrency: int,
        max_rps: float,
        chunk_units: int,
        settle_s: float,
        work_dir: Path | None,
        **kwargs: Any,
    ) -> Any:
        options = RunOptions(
            concurrency=concurrency,
            max_rps=max_rps,
            chunk_units=chunk_units,
            settle_s=settle_s,
            work_dir=work_dir,
        )
        return command(*args, options=options, **kwargs)

    decorated: Callable[..., Any] = with_options
    for option in reversed(_RUN_OPTIONS):
        decorated = option(decorated)
    return decorated


_RUN_OPTIONS = [
    click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="Cassandra queries in flight.",
    ),
    click.option(
        "--max-rps",
        type=click.FloatRange(min=0),
        default=5000,
        show_default=True,
        help="Cassandra queries per second at most (0: unlimited).",
    ),
    click.option(
        "--chunk-units",
        type=click.IntRange(min=1),
        default=256,
        show_default=True,
        help="Index units read per chunk (a chunk is the unit of resume).",
    ),
    click.option(
        "--settle-s",
        type=click.FloatRange(min=0),
        default=5.0,
        show_default=True,
        help="Wait before re-reading a mismatch, so writes in flight are not defects.",
    ),
    click.option(
        "--kafka-skew-s",
        type=click.IntRange(min=0),
        default=3600,
        show_default=True,
        help="With --truth kafka: read records this much older than the date can be.",
    ),
    dir_path(
        "--work-dir",
        help="Where audits keep their plan, progress and detail "
        "(default: <services.data_dir>/audits).",
    ),
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bar on stderr (default: when stderr is a terminal).",
    ),
]


@click.command()
@click.option("--date", callback=_date, help="Local date to audit, YYYY-MM-DD.")
@click.option("--left", type=_STORE, default="legacy", show_default=True)
@click.option("--right", type=_STORE, default="shadow", show_default=True)
@click.option(
    "--truth",
    default="none",
    show_default=True,
    callback=_truth,
    help="FILE of hydrated events (JSON Lines), 'kafka' (the topic, bounded to the "
    "date), or 'none'.",
)
@click.option("--company", "companies", multiple=True, help="Only this company (repeatable).")
@click.option("--statistic", "statistics", multiple=True, help="Only this statistic (repeatable).")
@click.option("--level", type=_LEVEL, default="both", show_default=True)
@click.option("--include-month", is_flag=True, help="Also compare the date's month buckets.")
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    metavar="MEASURE=N[%][,N%]",
    help="Per measure (count, uniques): absolute N and/or relative N%; repeatable. Default: exact.",
)
@click.option(
    "--allow-redeliveries",
    is_flag=True,
    help="Do not fail on a store that counts redeliveries when the other one "
    "matches the truth (legacy does not de-duplicate).",
)
@output_format(*FORMATS, default="table")
@file_path("--out", help="Write the report here (default: stdout).")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Attribution rows per dimension.",
)
@click.option(
    "--resume",
    "resume_id",
    default=None,
    metavar="AUDIT_ID",
    callback=_audit_id,
    help="Carry on with an interrupted audit (its parameters are stored).",
)
@_run_options
@click.pass_obj
def compare(
    settings: Settings,
    date: str | None,
    left: str,
    right: str,
    truth: str,
    companies: tuple[str, ...],
    statistics: tuple[str, ...],
    level: str,
    include_month: bool,
    tolerances: tuple[str, ...],
    allow_redeliveries: bool,
    fmt: str,
    out: Path | None,
    top: int,
    resume_id: str | None,
    options: RunOptions,
    kafka_skew_s: int,
    progress: bool | None,
) -> None:
    """Audit a date: two count stores against each other and the truth.

    Exit code 0 when every difference is within tolerance, 1 when not, 2 on error.
    """
    from compare.audit import resume_audit, run_audit

    if date is None and resume_id is None:
        raise click.UsageError("pass --date YYYY-MM-DD (or --resume AUDIT_ID)")
    try:
        tolerance = Tolerance.parse(tolerances)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tolerance") from None

    def run(update: Progress | None) -> AuditResult:
        if resume_id is not None:
            return resume_audit(settings, resume_id, options=options, progress=update)
        assert date is not None
        return run_audit(
            settings,
            date,
            left,
            right,
            truth,
            level=level,
            companies=companies,
            statistics=statistics,
            include_month=include_month,
            tolerance=tolerance,
            allow_redeliveries=allow_redeliveries,
            top=top,
            kafka_skew_s=kafka_skew_s,
            options=options,
            progress=update,
        )

    result = _audited(run, progress, fmt, out)
    sys.exit(result.exit_code)


def _audited(
    run: Callable[[Progress | None], AuditResult],
    progress: bool | None,
    fmt: str,
    out: Path | None,
) -> AuditResult:
    """The run path of every audit command: `run` with a progress bar on stderr when asked
    (default: when stderr is a terminal, so cron's logs stay plain), its errors as one line
    and exit 2 (`_failures`), its report rendered; the result (the caller exits by it)."""
    update, bar = _progress(sys.stderr.isatty() if progress is None else progress)
    with _failures():
        if bar is not None:
            bar.start()
        try:
            result = run(update)
        finally:
            if bar is not None:
                bar.stop()
        _emit(result, fmt, out)
    return result


def _emit(result: AuditResult, fmt: str, out: Path | None) -> None:
    with _output(out) as stream:
        render(result, fmt, stream)
    if fmt != "table" or out is not None:
        click.echo(visible(headline(result)), err=True)


@click.command()
@click.option("--store", type=_STORE, required=True)
@click.option(
    "--date",
    callback=_date,
    help="Only this local date (through its index); "
    "default: every counter of the store (a full scan).",
)
@click.option("--level", type=_LEVEL, default="both", show_default=True)
@click.option("--include-month", is_flag=True, help="With --date: also its month buckets.")
@output_format("jsonl")
@file_path("--out")
@click.pass_obj
def dump(
    settings: Settings,
    store: str,
    date: str | None,
    level: str,
    include_month: bool,
    fmt: str,
    out: Path | None,
) -> None:
    """A count store's counters in the exchange format (the lines `abacus recount` prints)."""
    from compare.dump import dump_store
    from counting import to_line

    if include_month and date is None:
        raise click.UsageError("--include-month needs --date")
    with _failures(), _output(out) as stream:
        for counted in dump_store(settings, store, _levels(level), date, include_month):
            stream.write(to_line(counted) + "\n")


@click.group()
def audits() -> None:
    """The audit history kept in the ops keyspace."""


@audits.command("list")
@click.option("--date", callback=_date, help="Only audits of this date.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@output_format("table", "json")
@click.pass_obj
def list_audits(settings: Settings, date: str | None, limit: int, fmt: str) -> None:
    """Audits, newest first."""
    from compare.audits import AuditStore
    from storage import Prepared, connect

    with _failures():
        session = connect(settings.cassandra)
        try:
            store = AuditStore(Prepared(session), settings.cassandra)
            records = (
                store.of_date(date)
                if date
                else sorted(store.all(), key=lambda r: r.started_at, reverse=True)
            )
        finally:
            session.cluster.shutdown()
    from compare.audits import narrowed_by

    rows = []
    for r in records[:limit]:
        s = r.summary or {}
        rows.append(
            {
                **{k: v for k, v in r.to_dict().items() if k != "params"},
                "keys_compared": s.get("keys_compared"),
                "mismatched": s.get("mismatched"),
                "defects": s.get("defects"),
                "narrowed_by": narrowed_by(r),
            }
        )
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "audit_id",
        "date",
        "left",
        "right",
        "truth",
        "outcome",
        "started_at",
        "compared",
        "mismatched",
        "defects",
        "scope (gates count full only)",
    )
    for row in rows:
        table.add_row(
            *(
                term(row[k]) if row[k] is not None else "-"
                for k in (
                    "audit_id",
                    "date",
                    "left",
                    "right",
                    "truth",
                    "outcome",
                    "started_at",
                    "keys_compared",
                    "mismatched",
                    "defects",
                )
            ),
            term("narrowed: " + ", ".join(row["narrowed_by"]) if row["narrowed_by"] else "full"),
        )
    Console().print(table)


@audits.command("show")
@click.argument("audit_id", callback=_audit_id)
@output_format(*FORMATS, default="table")
@file_path("--out")
@dir_path(
    "--work-dir", help="Where the audit kept its detail (default: <services.data_dir>/audits)."
)
@click.pass_obj
def show(
    settings: Settings, audit_id: str, fmt: str, out: Path | None, work_dir: Path | None
) -> None:
    """One audit's report (the detail when its work directory is on this machine)."""
    from compare.audit import load_audit

    with _failures():
        result = load_audit(settings, audit_id, work_dir)
        _emit(result, fmt, out)
    sys.exit(result.exit_code)


@audits.command("gate")
@click.option("--left", type=_STORE, required=True)
@click.option("--right", type=_STORE, required=True)
@click.option("--days", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--until", callback=_date, help="Last date (default: yesterday, UTC).")
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    metavar="MEASURE=N[%][,N%]",
    help="The tolerance the gate accepts (default: exact); an audit run with a "
    "looser one does not count.",
)
@click.option(
    "--allow-redeliveries",
    is_flag=True,
    help="Count audits run with --allow-redeliveries (default: they do not count).",
)
@output_format("text", "json")
@click.pass_obj
def gate(
    settings: Settings,
    left: str,
    right: str,
    days: int,
    until: str | None,
    tolerances: tuple[str, ...],
    allow_redeliveries: bool,
    fmt: str,
) -> None:
    """Were the last N days clean? Exit 0 if so, 1 if not.

    Only full-scope audits decide a day: both levels, a truth, no --company or --statistic
    filter, a tolerance no looser than the gate's. Narrowed audits are listed, not counted.
    """
    from compare.audits import GateScope, last_clean_days

    try:
        tolerance = Tolerance.parse(tolerances)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tolerance") from None
    scope = GateScope(tolerance=tolerance, allow_redeliveries=allow_redeliveries)
    with _failures():
        verdict = last_clean_days(settings, left, right, days, until, scope)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "clean": verdict.clean,
                    "left": left,
                    "right": right,
                    "days": [d.to_dict() for d in verdict.days],
                },
                indent=1,
            )
        )
    else:
        for day in verdict.days:
            click.echo(
                f"{day.date} {day.outcome or 'no finished full-scope audit'} "
                f"{day.audit_id or ''}".rstrip()
            )
            for n in day.narrowed:
                click.echo(
                    visible(f"  not counted: {n.audit_id} {n.outcome} ({', '.join(n.reasons)})")
                )
        click.echo(
            f"{'clean' if verdict.clean else 'NOT clean'}: last {days} days of {left} vs {right}"
        )
    sys.exit(0 if verdict.clean else 1)


@audits.command("run")
@click.option("--date", callback=_date, help="Local date to audit, YYYY-MM-DD.")
@click.option(
    "--yesterday",
    is_flag=True,
    help="Audit yesterday's date in UTC (the date `audits gate` and the cutover gate end at).",
)
@click.option("--left", type=_STORE, default="legacy", show_default=True)
@click.option("--right", type=_STORE, default="shadow", show_default=True)
@click.option(
    "--truth",
    default="kafka",
    show_default=True,
    callback=_truth,
    help="'kafka' (kafka.topic: the mirror's topic, bounded to the date) or a FILE of "
    "hydrated events; a gate needs a truth, so not 'none'.",
)
@click.option(
    "--include-month",
    is_flag=True,
    help="Also compare the month bucket (only once the month is over everywhere: an open "
    "month keeps counting after the truth's bounds are fixed).",
)
@output_format("table", "json")
@_run_options
@click.pass_obj
def run_full(
    settings: Settings,
    date: str | None,
    yesterday: bool,
    left: str,
    right: str,
    truth: str,
    include_month: bool,
    fmt: str,
    options: RunOptions,
    kafka_skew_s: int,
    progress: bool | None,
) -> None:
    """The gates' audit, for a scheduler (cron): a full-scope audit of a date that is over.

    Both levels, no company or statistic filter, exact, redeliveries not excused, against
    the truth (default: the mirror's Kafka topic); recorded in the ops keyspace, where
    `audits gate` and `cutover status` read it. Refuses a date some time zone is still
    counting (it ends everywhere at 12:00 UTC the next day). Exit 0 clean, 1 dirty,
    2 error. No progress bar unless stderr is a terminal.
    """
    from datetime import UTC, datetime, timedelta

    from compare.audit import run_audit
    from counting.buckets import date_over_s

    if (date is None) == (not yesterday):
        raise click.UsageError("pass --date YYYY-MM-DD or --yesterday (one of them)")
    if truth == "none":
        raise click.BadParameter("a gate needs a truth: kafka or a FILE", param_hint="--truth")
    now = datetime.now(UTC)
    day = date or (now.date() - timedelta(days=1)).isoformat()
    over = date_over_s(day, include_month)
    if now.timestamp() < over:
        what = f"the month of {day}" if include_month else day
        at = datetime.fromtimestamp(over, UTC).isoformat(timespec="minutes")
        raise Failure(
            f"{what} is not over in every time zone before {at} (UTC-12): "
            "its counts still change; audit it after that"
        )

    def run(update: Progress | None) -> AuditResult:
        return run_audit(
            settings,
            day,
            left,
            right,
            truth,
            include_month=include_month,
            kafka_skew_s=kafka_skew_s,
            options=options,
            progress=update,
        )

    result = _audited(run, progress, fmt, None)
    sys.exit(result.exit_code)
