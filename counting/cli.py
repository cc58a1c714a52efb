"""`abacus recount` and `abacus generate`: the contract's own commands.

counting is the bottom layer: this module imports nothing of the project above it (its
table is made safe by `counting.text.visible`, the rule `settings.output` applies too).
`events_file_option` and `generator_options` are shared with `abacus produce` (its input
file, and the generator's knobs of `--generate`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import chain
from typing import IO, Any, TypeVar

import click

from counting.events import read_lines
from counting.exchange import to_line, to_record
from counting.generate import DEFAULT_TIMEZONES, GeneratorConfig
from counting.generate import generate as generate_events
from counting.model import AccountCount, CustomerCount, Rejection
from counting.recount import Recount, paused_gc
from counting.text import escape, visible

F = TypeVar("F", bound=Callable[..., Any])


def events_file_option(required: bool) -> Callable[[F], F]:
    """`--events` (the parameter `events_file`): a binary JSON Lines file of hydrated events."""
    return click.option(
        "--events",
        "events_file",
        type=click.File("rb"),
        required=required,
        default=None,
        help="JSON Lines file of hydrated events ('-' reads stdin).",
    )


def rejection_line(rejection: Rejection) -> str:
    """One rejects line; an id or detail that cannot be written as UTF-8 (a lone surrogate)
    is escaped, and the line says so (`"escaped": true`)."""
    event_id, id_escaped = escape(rejection.event_id) if rejection.event_id else (None, False)
    detail, detail_escaped = escape(rejection.detail)
    record: dict[str, Any] = {
        "event_id": event_id,
        "reason": rejection.reason.value,
        "detail": detail,
    }
    if id_escaped or detail_escaped:
        record["escaped"] = True
    return json.dumps(record, ensure_ascii=False)


@click.command()
@events_file_option(required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "json", "table"]),
    default="jsonl",
    show_default=True,
)
@click.option(
    "--rejects",
    type=click.File("w", encoding="utf-8"),
    default=None,
    help="Write one JSON line per rejected event (event_id, reason, detail).",
)
def recount(events_file: IO[bytes], fmt: str, rejects: IO[str] | None) -> None:
    """The reference counts of a file of hydrated events (SEMANTICS.md), rejects apart."""
    result = Recount()
    out = sys.stdout
    with paused_gc():
        for raw in read_lines(events_file):
            rejection = result.add_raw(raw)
            if rejection is not None and rejects is not None:
                rejects.write(rejection_line(rejection) + "\n")
        counted: Iterator[AccountCount | CustomerCount] = chain(result.account(), result.customer())
        if fmt == "jsonl":
            for item in counted:
                out.write(to_line(item) + "\n")
        elif fmt == "json":
            json.dump([to_record(c) for c in counted], out, ensure_ascii=False, indent=1)
            out.write("\n")
        else:
            _print_table([to_record(c) for c in counted])
    summary = (
        f"recount: {result.events} events counted, {result.duplicates} duplicates, "
        f"{sum(result.rejected.values())} rejected"
    )
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(result.rejected.items()))
    click.echo(summary + (f" ({reasons})" if reasons else ""), err=True)


def _print_table(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        "level",
        "company",
        "customer",
        "statistic",
        "res",
        "bucket",
        "facet",
        "value",
        "count",
        "uniques",
    )
    for r in sorted(records, key=lambda r: tuple(str(v) for v in r.values())):
        table.add_row(
            *(
                Text(visible(v))
                for v in (
                    r["level"],
                    r["company_id"],
                    r.get("customer_id", ""),
                    r["statistic_id"],
                    r["resolution"],
                    r["bucket"],
                    r.get("facet", ""),
                    r.get("value", ""),
                    r["count"],
                    r.get("uniques", ""),
                )
            )
        )
    Console().print(table)


def _parse_start(value: str) -> int:
    try:
        return int(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise click.BadParameter(f"expected an ISO date or datetime (UTC), got {value!r}") from None


def generator_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The generator's mix as options (--seed, --companies, --customers, --statistics,
    --facets, --duplicates, --late), given to the command as one parameter `mix`: the
    `GeneratorConfig` fields they set, so `GeneratorConfig(n=n, **mix)`."""

    @functools.wraps(command)
    def with_mix(
        *args: Any,
        seed: int,
        companies: int,
        customers: int,
        statistics: int,
        facets: int,
        duplicates: float,
        late: float,
        **kwargs: Any,
    ) -> Any:
        mix = {
            "seed": seed,
            "companies": companies,
            "customers": customers,
            "statistics": statistics,
            "facets": facets,
            "duplicate_share": duplicates,
            "late_share": late,
        }
        return command(*args, mix=mix, **kwargs)

    share = click.FloatRange(0, 1, max_open=True)
    options = [
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--companies", type=click.IntRange(min=1), default=50, show_default=True),
        click.option("--customers", type=click.IntRange(min=1), default=20_000, show_default=True),
        click.option("--statistics", type=click.IntRange(min=1), default=6, show_default=True),
        click.option("--facets", type=click.IntRange(0, 8), default=4, show_default=True),
        click.option(
            "--duplicates",
            type=share,
            default=0.0,
            show_default=True,
            help="Share of redeliveries (same event_id).",
        ),
        click.option(
            "--late",
            type=share,
            default=0.0,
            show_default=True,
            help="Share of events hours to days late.",
        ),
    ]
    decorated: Callable[..., Any] = with_mix
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


@click.command()
@click.option("--n", "n", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-", show_default=True)
@generator_options
@click.option(
    "--timezones",
    default=",".join(DEFAULT_TIMEZONES),
    show_default=True,
    help="Comma-separated IANA names, one per company in turn.",
)
@click.option("--start", default="2025-12-01", show_default=True, help="UTC start of the span.")
@click.option("--span-s", type=click.IntRange(min=1), default=86_400, show_default=True)
def generate(
    n: int, out: IO[str], mix: dict[str, Any], timezones: str, start: str, span_s: int
) -> None:
    """Write hydrated events as JSON Lines, deterministic for a seed."""
    from counting.events import known_timezones

    zones = tuple(z.strip() for z in timezones.split(",") if z.strip())
    unknown = [z for z in zones if z not in known_timezones()]
    if unknown or not zones:
        raise click.BadParameter(
            f"unknown time zone(s): {', '.join(unknown) or '(none given)'}",
            param_hint="--timezones",
        )
    config = GeneratorConfig(
        n=n, timezones=zones, start_ts=_parse_start(start), span_s=span_s, **mix
    )
    for event in generate_events(config):
        out.write(json.dumps(event, ensure_ascii=False) + "\n")


__all__ = ["events_file_option", "generate", "generator_options", "recount", "rejection_line"]
