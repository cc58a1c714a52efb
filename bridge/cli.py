"""`abacus bridge ...`: run the RabbitMQ -> Kafka bridge, and read its counts."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from bridge import rabbit
from bridge.rabbit import MirrorQueueMismatch
from bridge.status import COUNTERS, read_status, status_path
from settings.logs import configure_for, with_log_format
from settings.model import Settings
from settings.options import Failure, confirm, file_path, log_format, output_format

MODE = click.Choice(["shadow", "live"])
EXIT_NOT_RUNNING = 3


@click.group()
def bridge() -> None:
    """Copy the aggregation queue into Kafka (shadow: a mirror queue; live: the legacy queue)."""


@bridge.command()
@click.option(
    "--mode",
    type=MODE,
    required=True,
    help="shadow: own mirror queue, legacy untouched; live: consume the legacy queue.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(1, 65535),
    default=None,
    help="Unacked messages in flight (default: rabbitmq.prefetch).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port, 0 = a free one (default: bridge.metrics_port).",
)
@click.option("--topic", default=None, help="Events topic (default: kafka.topic).")
@click.option("--dlq-topic", default=None, help="Dead-letter topic (default: kafka.dlq_topic).")
@click.option(
    "--queue",
    default=None,
    help="Override the consumed queue (default: rabbitmq.shadow_queue or legacy_queue).",
)
@file_path(
    "--status-file",
    help="Where to write the counts every second "
    "(default: <services.data_dir>/bridge/<mode>.json).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every connection event.")
@log_format()
@click.pass_obj
def run(
    settings: Settings,
    mode: str,
    prefetch: int | None,
    metrics_port: int | None,
    topic: str | None,
    dlq_topic: str | None,
    queue: str | None,
    status_file: Path | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Run the bridge until SIGTERM/SIGINT (then flush, ack what Kafka confirmed, exit 0).

    Shadow mode also drains the mirror's overflow queue and counts it per event date.
    """
    from bridge.kafka import TopicConfigError
    from bridge.overflow import OverflowDrainer
    from bridge.service import Bridge

    settings = with_log_format(settings, log_format)
    configure_for(settings, logging.INFO if verbose else logging.WARNING)
    logging.getLogger("abacus.bridge").setLevel(logging.INFO)
    settings = _override(settings, mode, topic, dlq_topic, queue)
    svc = Bridge(
        settings,
        mode,  # type: ignore[arg-type]
        prefetch=prefetch,
        metrics_port=settings.bridge.metrics_port if metrics_port is None else metrics_port,
        status_file=status_file,
    )
    svc.install_signal_handlers()
    drainer = None
    try:
        if mode == "shadow":
            rabbit.check_shadow_topology(settings.rabbitmq)
            drainer = OverflowDrainer(settings, svc.counts).start()
        svc.run()
    except (MirrorQueueMismatch, TopicConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if drainer is not None:
            drainer.stop()


def _override(
    settings: Settings, mode: str, topic: str | None, dlq_topic: str | None, queue: str | None
) -> Settings:
    kafka: dict[str, Any] = {}
    if topic:
        kafka["topic"] = topic
    if dlq_topic:
        kafka["dlq_topic"] = dlq_topic
    rmq: dict[str, Any] = {}
    if queue:
        rmq["shadow_queue" if mode == "shadow" else "legacy_queue"] = queue
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update=kafka),
            "rabbitmq": settings.rabbitmq.model_copy(update=rmq),
        }
    )


def _name(_: Any, param: click.Parameter, value: str | None) -> str | None:
    from settings.names import check_file_name

    if value is None:
        return None
    try:
        return check_file_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


@bridge.command()
@click.option("--mode", type=MODE, required=True, help="shadow: the mirror queue; live: legacy's.")
@click.option(
    "--name", callback=_name, default=None, help="The managed bridge's name (default: the mode)."
)
@click.option("--topic", default=None, help="Events topic (default: kafka.topic).")
@click.option("--queue", default=None, help="Override the consumed queue (as `bridge run`).")
@click.option("--dlq-topic", default=None, help="Dead-letter topic (default: kafka.dlq_topic).")
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="How long to wait until it consumes.",
)
@output_format("text", "json")
@log_format()
@click.pass_obj
def start(
    settings: Settings,
    mode: str,
    name: str | None,
    topic: str | None,
    queue: str | None,
    dlq_topic: str | None,
    timeout_s: float,
    fmt: str,
    log_format: str | None,
) -> None:
    """Start a bridge in the background (detached, with a pid file, a log and a status file
    in <services.data_dir>/bridge/); return once it consumes. Idempotent: a bridge of that
    name already running is left as it is. Exit 2 when it does not start. --log-format:
    its log's format."""
    from bridge import manage

    settings = with_log_format(settings, log_format)  # the started bridge gets its settings
    try:
        result = manage.start(
            settings,
            mode,  # type: ignore[arg-type]
            name,
            topic,
            queue,
            timeout_s,
            dlq_topic,
        )
    except (manage.BridgeError, MirrorQueueMismatch) as exc:
        raise Failure(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(result, indent=1, sort_keys=True))
        return
    what = "already running" if result["already_running"] else "started"
    click.echo(
        f"bridge {result['name']}: {what}, pid {result['pid']}, consuming {result['queue']} "
        f"-> {result['topic']} as {result['consumer_tag']}; log {result['log']}"
    )


@bridge.command()
@click.argument("name", callback=_name)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="SIGKILL after this long (its unacked messages return to the queue).",
)
@output_format("text", "json")
@click.pass_obj
def stop(settings: Settings, name: str, timeout_s: float, fmt: str) -> None:
    """Stop a managed bridge: SIGTERM (it flushes Kafka, acks only what Kafka confirmed,
    exits), SIGKILL only after --timeout-s. Not running: nothing to do (exit 0)."""
    from bridge import manage

    result = manage.stop(settings, name, timeout_s)
    if fmt == "json":
        click.echo(json.dumps(result, indent=1, sort_keys=True))
        return
    if not result["was_running"]:
        click.echo(f"bridge {name}: not running")
        return
    how = "KILLED after the deadline" if result["killed"] else "stopped"
    totals = result.get("totals") or {}
    counts = ", ".join(
        f"{k} {totals[k]:,}" for k in ("consumed", "produced", "acked") if k in totals
    )
    click.echo(
        f"bridge {name}: {how} (pid {result['pid']}, {result['seconds']:.1f}s)"
        + (f"; {counts}" if counts else "")
    )
    if result["killed"]:
        sys.exit(1)


@bridge.command()
@output_format("table", "json")
@click.pass_obj
def ps(settings: Settings, fmt: str) -> None:
    """The bridges of <services.data_dir>/bridge/: running or not, pid, queue, topic,
    consumer tag, counts."""
    from bridge import manage

    found = manage.ps(settings)
    if fmt == "json":
        click.echo(json.dumps(found, indent=1, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    from settings.output import term

    shown = ("consumed", "produced", "acked")
    table = Table("name", "state", "pid", "queue -> topic", "consumer tag", *shown)
    for b in found:
        totals = b.get("totals") or {}
        table.add_row(
            term(b["name"]),
            "running" if b["running"] else ("dead" if b["stale_pid"] else "stopped"),
            str(b["pid"] or b["stale_pid"] or "-"),
            term(f"{b['queue'] or '?'} -> {b['topic'] or '?'}"),
            term(str(b["consumer_tag"] or "-")),
            *(f"{totals[k]:,}" if k in totals else "-" for k in shown),
        )
    Console().print(table)


@bridge.command("mirror-remove")
@confirm()
@click.pass_obj
def mirror_remove(settings: Settings, yes: bool) -> None:
    """Delete the mirror queue and its overflow queue (leaving shadow), refused while the
    shadow bridge consumes them. What they still hold is dropped (copies of legacy's)."""
    from bridge import manage

    r = settings.rabbitmq
    if not yes:
        held = {q: rabbit.queue_depth(r, q) for q in (r.shadow_queue, r.mirror_overflow_queue)}
        shown = ", ".join(
            f"{q!r} ({'missing' if d is None else f'{d[0]:,} ready, {d[1]} consumers'})"
            for q, d in held.items()
        )
        click.echo(f"would delete {shown}; run again with --yes to do it")
        return
    try:
        result = manage.remove_mirror(settings)
    except manage.BridgeError as exc:
        raise Failure(str(exc)) from None
    click.echo(
        "deleted "
        + ", ".join(f"{q!r} ({n:,} message(s) dropped)" for q, n in result["deleted"].items())
    )


@bridge.command("mirror-upgrade")
@confirm()
@click.pass_obj
def mirror_upgrade(settings: Settings, yes: bool) -> None:
    """Replace a mirror queue left unbounded by an earlier version by the bounded one.

    With the shadow bridge stopped: the overflow queue catches what is published meanwhile,
    the old mirror's backlog is counted as mirror overflow per event date (`bridge status`,
    and the audit of each date, name it), the old queue is deleted once empty and the
    bounded one declared and bound. Legacy's queue and publishers are not involved.
    """
    from bridge.overflow import UpgradeRefused, upgrade_mirror

    r = settings.rabbitmq
    depth = rabbit.queue_depth(r, r.shadow_queue)
    if not yes:
        held = "missing" if depth is None else f"{depth[0]:,} ready, {depth[1]} consumers"
        click.echo(
            f"would replace mirror queue {r.shadow_queue!r} ({held}) by a bounded one "
            f"(max length {r.mirror_max_length:,}, {r.mirror_max_bytes:,} bytes, drop-head "
            f"to {r.mirror_overflow_queue!r}), counting its backlog as mirror overflow per "
            "event date; run again with --yes to do it"
        )
        return
    try:
        counted = upgrade_mirror(settings)
    except (UpgradeRefused, MirrorQueueMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    total = sum(o.messages for o in counted.values())
    by_date = ", ".join(f"{d} {o.messages:,}" for d, o in sorted(counted.items()))
    click.echo(
        f"mirror queue {r.shadow_queue!r} is bounded; {total:,} message(s) of its backlog "
        "counted as mirror overflow" + (f" ({by_date})" if by_date else "")
    )


@bridge.command()
@click.option(
    "--mode", type=click.Choice(["shadow", "live", "all"]), default="all", show_default=True
)
@output_format("table", "json")
@click.option(
    "--minutes",
    type=click.IntRange(0, 60),
    default=5,
    show_default=True,
    help="Per-minute rows to show in the table.",
)
@file_path(
    "--status-file",
    help="Read this status file instead of <services.data_dir>/bridge/<mode>.json.",
)
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help="Also ask RabbitMQ for the queue depth and Kafka for the topic end offsets.",
)
@click.pass_obj
def status(
    settings: Settings, mode: str, fmt: str, minutes: int, status_file: Path | None, probe: bool
) -> None:
    """Counts of the bridge (totals and per minute) to reconcile queue, topic and Abacus.

    Exits 3 when no bridge of the asked mode is running (the counts of the last run are
    still printed when its status file exists).
    """
    modes = ["shadow", "live"] if mode == "all" else [mode]
    docs: list[dict[str, Any]] = []
    for m in modes:
        path = status_file or status_path(settings.services.data_dir, m)
        doc = read_status(path)
        if doc is None:
            if mode != "all":
                docs.append({"mode": m, "running": False, "status_file": str(path)})
            continue
        doc["status_file"] = str(path)
        if probe:
            _probe(settings, doc)
        docs.append(doc)
    if fmt == "json":
        click.echo(json.dumps(docs if mode == "all" else docs[0], indent=2, sort_keys=True))
    else:
        _render(docs, minutes)
    if not any(d.get("running") for d in docs):
        sys.exit(EXIT_NOT_RUNNING)


def _probe(settings: Settings, doc: dict[str, Any]) -> None:
    from bridge.kafka import topic_end_offsets

    queue = doc.get("queue") or rabbit.queue_for(doc["mode"], settings.rabbitmq)
    depth = rabbit.queue_depth(settings.rabbitmq, queue)
    doc["queue_depth"] = None if depth is None else {"ready": depth[0], "consumers": depth[1]}
    topic = doc.get("topic") or settings.kafka.topic
    dlq = doc.get("dlq_topic") or settings.kafka.dlq_topic
    doc["topic_end_offsets"] = topic_end_offsets(settings.kafka, topic, timeout_s=3.0)
    doc["dlq_end_offsets"] = topic_end_offsets(settings.kafka, dlq, timeout_s=3.0)
    if doc["mode"] == "shadow":
        _probe_overflow(settings, doc)


def _probe_overflow(settings: Settings, doc: dict[str, Any]) -> None:
    """The overflow queue's depth (not counted yet) and the counts per event date."""
    depth = rabbit.queue_depth(settings.rabbitmq, settings.rabbitmq.mirror_overflow_queue)
    doc["overflow_queue_depth"] = None if depth is None else {"ready": depth[0]}
    doc["mirror_overflow_by_date"] = _overflow_by_date(settings)


def _overflow_by_date(settings: Settings) -> dict[str, dict[str, int]] | None:
    """{date: {messages, redelivered}} from the ops keyspace, or None if unreadable."""
    import storage
    from storage.cassandra import Prepared
    from storage.overflow import OverflowStore

    try:
        session = storage.connect(settings.cassandra)
    except Exception:  # a status probe never fails the caller
        return None
    try:
        found = OverflowStore(Prepared(session), settings.cassandra).all()
    except Exception:  # no ops keyspace or table yet: nothing overflowed through here
        return None
    finally:
        session.cluster.shutdown()
    return {
        date: {"messages": o.messages, "redelivered": o.redelivered}
        for date, o in sorted(found.items())
    }


def _render(docs: list[dict[str, Any]], minutes: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from settings.output import term

    console = Console()
    if not docs:
        console.print("no bridge has run yet (no status file)")
        return
    for doc in docs:
        state = "running" if doc.get("running") else "not running"
        console.print(
            term(f"bridge {doc['mode']}", style="bold")
            + term(
                f": {state}; queue {doc.get('queue', '?')} -> "
                f"topic {doc.get('topic', '?')} (DLQ {doc.get('dlq_topic', '?')}); "
                f"in flight {doc.get('in_flight', 0)}"
            )
        )
        if "totals" not in doc:
            continue
        table = Table("minute", *COUNTERS)
        for row in doc.get("per_minute", [])[-minutes:] if minutes else []:
            table.add_row(term(row["minute"]), *(f"{row[k]:,}" for k in COUNTERS))
        table.add_row(term("total", style="bold"), *(f"{doc['totals'][k]:,}" for k in COUNTERS))
        console.print(table)
        if doc.get("dead_lettered_by_reason"):
            reasons = ", ".join(
                f"{k} {v:,}" for k, v in sorted(doc["dead_lettered_by_reason"].items())
            )
            console.print(term(f"dead-lettered by reason: {reasons}"))
        if "queue_depth" in doc:
            qd = doc["queue_depth"]
            console.print(
                term(
                    "queue: "
                    + (
                        "unreachable"
                        if qd is None
                        else f"{qd['ready']:,} ready, {qd['consumers']} consumers"
                    )
                    + f"; topic end offsets {doc.get('topic_end_offsets')}, "
                    f"DLQ end offsets {doc.get('dlq_end_offsets')}"
                )
            )
        _render_overflow(console, doc)
        if doc.get("last_error"):
            console.print(term(f"last error: {doc['last_error']}"))


def _render_overflow(console: Any, doc: dict[str, Any]) -> None:
    from rich.text import Text

    totals = doc.get("totals", {})
    by_date = doc.get("mirror_overflow_by_date")
    if doc.get("mode") != "shadow" or not (totals.get("mirror_overflow") or by_date):
        return
    line = (
        f"mirror overflow: {totals.get('mirror_overflow', 0):,} since start "
        f"({totals.get('mirror_overflow_redelivered', 0):,} redelivered, "
        f"overflow queue found full {totals.get('overflow_full', 0):,} times)"
    )
    if by_date:
        line += "; by event date: " + ", ".join(
            f"{d} {c['messages']:,}" for d, c in by_date.items()
        )
    qd = doc.get("overflow_queue_depth")
    if qd:
        line += f"; {qd['ready']:,} waiting in the overflow queue"
    console.print(Text(line))
