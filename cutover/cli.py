"""`abacus cutover status|plan|advance|rollback|history`.

Exit codes: 0 done (or, for `status`, the stage is healthy and not in transition), 1 refused
(a gate not passed, `--yes` not given, another operator's transition, a stage with no such
move) or not healthy, 2 an error (a step failed: the stage row says which, `advance` or
`rollback` again carries on).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from settings import Settings
from settings.options import Failure, confirm, output_format
from settings.output import term


@click.group("cutover")
def cutover() -> None:
    """Staged cutover legacy -> shadow -> m1 (and back), gated by clean audits."""


@contextmanager
def _machine(settings: Settings, say: bool = True) -> Iterator[Any]:
    from cutover.machine import Machine
    from cutover.steps import TRANSITIONS
    from storage import connect

    try:
        session = connect(settings.cassandra)
    except Exception as exc:
        raise Failure(f"cannot reach Cassandra: {type(exc).__name__}: {exc}") from exc
    try:
        yield Machine(
            settings,
            session,
            TRANSITIONS,
            say=lambda line: click.echo(line, err=True) if say else None,
        )
    finally:
        session.cluster.shutdown()


@cutover.command()
@output_format("table", "json")
@click.pass_obj
def status(settings: Settings, fmt: str) -> None:
    """The stage, since when, what runs and whether it is healthy, and the gate to the next
    stage with its evidence."""
    from cutover.status import status_doc

    with _machine(settings) as machine:
        doc = status_doc(settings, machine)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        _print_status(doc)
    sys.exit(0 if doc["healthy"] else 1)


def _print_status(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        term(
            f"stage {doc['stage']} since {doc['since']} (epoch {doc['epoch']}); reads: "
            f"{doc['reads']['control']}"
            + (f", candidate {doc['reads']['candidate']}" if doc["reads"]["candidate"] else "")
        )
    )
    if doc["transition"]:
        console.print(term(doc["transition"]["summary"]), style="bold yellow")
    table = Table("component", "ok", "detail")
    for c in doc["components"]:
        table.add_row(term(c["component"]), "yes" if c["ok"] else "NO", term(c["detail"]))
    console.print(table)
    nxt = doc["next"]
    if nxt:
        if "refused" in nxt:
            console.print(term(f"next: {nxt['stage']}: {nxt['refused']}"))
        elif nxt["gate"]:
            g = nxt["gate"]
            verdict = "PASSED" if g["passed"] else "not passed"
            console.print(term(f"gate to {nxt['stage']}: {g['name']}: {verdict}"))
            for day in g["evidence"].get("days", []):
                console.print(
                    term(
                        f"  {day['date']}: {day['outcome'] or 'no full-scope audit'}"
                        + (f" ({day['audit_id']})" if day["audit_id"] else "")
                        + (
                            f"; not counted: {len(day['not_counted'])}"
                            if day.get("not_counted")
                            else ""
                        )
                    )
                )
            for name, answer in g["evidence"].get("services", {}).items():
                console.print(term(f"  {name}: {answer}"))


def _print_plan(plan: Any) -> None:
    doc = plan.to_dict()
    click.echo(f"{doc['kind']} {doc['from']} -> {doc['to']}")
    if doc["undo_of"]:
        u = doc["undo_of"]
        click.echo(
            f"  undoes the unfinished {u['from']} -> {u['to']} (stopped at step {u['step'] + 1})"
        )
    if doc["gate"]:
        g = doc["gate"]
        click.echo(f"  gate: {g['name']}: {'passed' if g['passed'] else 'NOT passed'}")
    for s in doc["steps"]:
        mark = "done" if s["done"] else "todo"
        click.echo(f"  {s['step']}. [{mark}] {s['name']}: {s['says']}")


@cutover.command()
@click.option("--to", "to", required=True, help="The stage to advance to.")
@output_format("table", "json")
@click.pass_obj
def plan(settings: Settings, to: str, fmt: str) -> None:
    """The steps `advance --to S` would take, and its gate now."""
    from cutover.machine import Refused

    with _machine(settings) as machine:
        try:
            p = machine.plan_advance(to)
        except Refused as exc:
            click.echo(f"refused: {exc}", err=True)
            sys.exit(1)
    if fmt == "json":
        click.echo(json.dumps(p.to_dict(), indent=1, default=str))
    else:
        _print_plan(p)


def _run(fmt: str, action: Any) -> None:
    from cutover.machine import Refused

    try:
        outcome = action()
    except Refused as exc:
        if fmt == "json":
            plan = getattr(exc, "plan", None)
            click.echo(json.dumps({"refused": str(exc), "plan": plan.to_dict() if plan else None}))
        click.echo(f"refused: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        raise Failure(
            f"{type(exc).__name__}: {exc} (the stage row records the step reached: "
            "`abacus cutover status`; run the command again to carry on, or `rollback`)"
        ) from exc
    if fmt == "json":
        click.echo(json.dumps(outcome.to_dict(), indent=1, default=str))
    elif outcome.action == "preview":
        _print_plan(outcome.plan)
        click.echo("nothing changed: add --yes to do it", err=True)
    else:
        click.echo(
            f"{outcome.action}: stage {outcome.stage}" + (" (forced)" if outcome.forced else "")
        )
        for r in outcome.results:
            click.echo(f"  {r['step']}. {r['name']} ({r['s']} s)")
    if outcome.action == "preview":
        sys.exit(1)


@cutover.command()
@click.option("--to", "to", required=True, help="The stage to advance to.")
@confirm()
@click.option("--force", is_flag=True, help="Pass a failing gate (recorded as forced).")
@click.option("--reason", help="Why (recorded; required with --force).")
@output_format("table", "json")
@click.pass_obj
def advance(
    settings: Settings, to: str, yes: bool, force: bool, reason: str | None, fmt: str
) -> None:
    """Check the gate, then run the steps to stage TO; the stage changes by compare-and-set
    once the last step is done. Again after an interruption: carries on where it stopped."""
    with _machine(settings) as machine:
        _run(fmt, lambda: machine.advance(to, yes=yes, force=force, reason=reason))


@cutover.command()
@confirm()
@click.option("--reason", help="Why (recorded).")
@output_format("table", "json")
@click.pass_obj
def rollback(settings: Settings, yes: bool, reason: str | None, fmt: str) -> None:
    """Back to the previous stage; during an unfinished transition, undo it."""
    with _machine(settings) as machine:
        _run(fmt, lambda: machine.rollback(yes=yes, reason=reason))


@cutover.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@output_format("table", "json")
@click.pass_obj
def history(settings: Settings, limit: int, fmt: str) -> None:
    """Every transition, newest first: who, where, when, from, to, audits, forced, reason."""
    from cutover.status import when

    with _machine(settings) as machine:
        rows = machine.history(limit)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for r in rows:  # one line each: a table of ten columns does not fit a terminal
        click.echo(
            term(
                f"{when(r['at_ms'])}  {r['kind']} {r['from_stage']} -> {r['to_stage']}  "
                f"{r['state']}  by {r['who']}@{r['host']}"
                + ("  FORCED" if r["forced"] else "")
                + (f"  reason: {r['reason']}" if r["reason"] else "")
                + (f"  audits: {', '.join(r['audit_ids'])}" if r["audit_ids"] else "")
            ).plain
        )
