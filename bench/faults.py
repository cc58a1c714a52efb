"""`abacus bench faults`: one shadow run per fault, the fault injected while traffic flows.

For each fault: `abacus shadow run` (a child process, `--format json`) publishes generated
events at a low rate; once a third of them are published the fault is injected (a server
restarted, paused, killed and started again; a component or job SIGKILLed; the run itself
SIGKILLed, then a second run started to show that it cleans up). When the run ends, the
figures come from the run's own stores and event log, not from its audit (a run that fails
audits nothing):

- published: the run's event log (probes excluded: the bench runs without them);
- counted: events each pipeline counted (its customer store at the day resolution: one per
  event), against the truth (the recount of the event log);
- over / under: the sum over customer-day counters of what a pipeline has above / below the
  truth, in events;
- dead-lettered: legacy's dead-letter queue; Abacus: the bridge's dead letters plus the jobs'
  DLQ topic;
- queued: messages left in the legacy queue / the bridge's mirror queue when the run ended
  (a run that fails stops its consumers: what is queued is not lost);
- recovered after: seconds from the injection to the run's end of drain (`stopped_at` in its
  run.json), or the run's error when it did not drain;
- excess: count increments in the store (both levels, every resolution and facet pair)
  minus the truth's; Abacus's re-applied and uncertain increments (`shadow.restores`, both
  jobs, the same unit): what a restore wrote again, and writes whose fate a fault left
  unknown. Expected: re-applied <= excess <= re-applied + uncertain. Legacy's re-applied
  (flusher-kill): the count increments the killed flusher had written and not deleted from
  its batch, as it recorded them before dying (`chaos_unconfirmed_count` in legacy's
  stats), written again by the flusher that reclaimed the batch. Expected: excess equals it.

flusher-kill lands where the documented flaw is: SIGUSR1 arms the chaos kill in the run's
running flusher (`Flusher.arm_kill`), which SIGKILLs itself right after its next write to
Cassandra, before deleting what it wrote from Big Bertha's batch; the run's supervisor
restarts it, and the new flusher reclaims the batch once its lease expired.

Faults kill and restart servers: run it on a private server set (another data dir and
ports, see tests/faults/conftest.py) unless nothing else uses the servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import click

from settings import Settings
from settings.options import file_path, seed

PAUSE_S = 30.0
KILLED_DOWN_S = 10.0


@dataclass
class FaultRow:
    fault: str
    published: int = 0
    exit_code: int | None = None
    error: str | None = None
    injected: str = ""  # what was done, with its figures (e.g. "down 14 s")
    recovered_s: float | None = None
    legacy: dict[str, int] = field(default_factory=dict)  # counted, over, under, dead
    abacus: dict[str, int] = field(default_factory=dict)  # + reapplied, uncertain
    run_id: str = ""
    note: str = ""


@dataclass
class Target:
    settings: Settings
    run_dir: Path
    child: subprocess.Popen[bytes]

    def doc(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.run_dir / "run.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def component(self, index: int) -> int:
        """The pid of a component of the run: 0 worker, 1 flusher, 2 bridge."""
        return int(self.doc()["pids"][index])

    def job_pid(self, kind: str) -> int:
        from abacus import manager

        jobs = self.doc()["jobs"]
        state = manager.status(self.settings_of_run(), jobs[kind])
        if state is None or state.pid is None:
            raise RuntimeError(f"no running {kind} job in {self.run_dir}")
        return int(state.pid)

    def settings_of_run(self) -> Settings:
        return _run_settings(self.settings, self.doc())


def _run_settings(settings: Settings, doc: dict[str, Any]) -> Settings:
    """The settings the run used: its overrides (names of keyspaces, topics, queues)."""
    update = {}
    for section, values in (doc.get("overrides") or {}).items():
        update[section] = getattr(settings, section).model_copy(update=values)
    return settings.model_copy(update=update)


def _service(settings: Settings, name: str) -> Any:
    from services import manager as services

    (svc,) = services.services(settings, [name])
    return svc


def _restart(name: str) -> Callable[[Target], str]:
    def inject(ctx: Target) -> str:
        from services import manager as services

        began = time.monotonic()
        services.stop(ctx.settings, [name])
        services.ensure_up(ctx.settings, [name])
        return f"stopped and started, down {time.monotonic() - began:.0f} s"

    return inject


def _cassandra_pause(ctx: Target) -> str:
    pid = _service(ctx.settings, "cassandra").pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)  # the fault itself: a partition of this length
    finally:
        os.kill(pid, signal.SIGCONT)
    return f"SIGSTOP {PAUSE_S:.0f} s, SIGCONT"


def _cassandra_kill(ctx: Target) -> str:
    from services import manager as services

    svc = _service(ctx.settings, "cassandra")
    os.kill(svc.pid(), signal.SIGKILL)
    began = time.monotonic()
    time.sleep(KILLED_DOWN_S)  # the fault itself: the server stays dead this long
    (back,) = services.ensure_up(ctx.settings, ["cassandra"])
    return (
        f"SIGKILL, `up` after {KILLED_DOWN_S:.0f} s "
        f"({'restarted, stale pid cleaned' if back.restarted else 'not restarted?'}), "
        f"down {time.monotonic() - began:.0f} s"
    )


def _kill_component(index: int, what: str) -> Callable[[Target], str]:
    def inject(ctx: Target) -> str:
        pid = ctx.component(index)
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL {what} (pid {pid})"

    return inject


def _kill_flusher(ctx: Target, timeout_s: float = 120.0) -> str:
    """Arm the running flusher's chaos kill (SIGUSR1) and wait until it died of it."""
    from services import procs

    pid = ctx.component(1)
    began = time.monotonic()
    os.kill(pid, signal.SIGUSR1)
    while procs.alive(pid) and time.monotonic() - began < timeout_s:
        time.sleep(0.1)
    if procs.alive(pid):
        return f"SIGUSR1 to the Big Bertha flusher (pid {pid}): still alive after {timeout_s:.0f} s"
    stats = _legacy_stats(ctx.settings_of_run())
    return (
        f"SIGUSR1 armed the Big Bertha flusher (pid {pid}): it SIGKILLed itself "
        f"{time.monotonic() - began:.1f} s later, between a write and its delete "
        f"({stats.get('chaos_unconfirmed_keys', 0)} keys written unconfirmed)"
    )


def _legacy_stats(settings: Settings) -> dict[str, int]:
    from legacy.aggregation import redis_client
    from legacy.keys import RedisKeys

    client = redis_client(settings)
    try:
        # redis-py types a reply as sync or awaitable; this client is sync: a dict
        raw = cast("dict[bytes, bytes]", client.hgetall(RedisKeys.of(settings.redis).stats))
        return {k.decode(): int(v) for k, v in raw.items()}
    finally:
        client.close()


def _kill_job(kind: str) -> Callable[[Target], str]:
    def inject(ctx: Target) -> str:
        pid = ctx.job_pid(kind)
        os.killpg(pid, signal.SIGKILL)  # the runner and its JVM
        return f"SIGKILL the {kind} job's process group (pid {pid})"

    return inject


def _kill_run(ctx: Target) -> str:
    os.kill(ctx.child.pid, signal.SIGKILL)
    return f"SIGKILL `shadow run` (pid {ctx.child.pid})"


FAULTS: dict[str, Callable[[Target], str] | None] = {
    "none": None,
    "cassandra-restart": _restart("cassandra"),
    "cassandra-pause": _cassandra_pause,
    "cassandra-kill": _cassandra_kill,
    "kafka-restart": _restart("kafka"),
    "rabbitmq-restart": _restart("rabbitmq"),
    "redis-restart": _restart("redis"),
    "bridge-kill": _kill_component(2, "the bridge"),
    "worker-kill": _kill_component(0, "the legacy worker's main process"),
    "flusher-kill": _kill_flusher,
    "statistic-job-kill": _kill_job("statistic"),
    "customer-job-kill": _kill_job("customer"),
    "shadow-run-kill": _kill_run,
}


def _shadow_args(events: int, seed: int, rate: float) -> list[str]:
    """`abacus shadow run` on generated events at a low rate, its result as JSON, no live view."""
    return [
        "shadow",
        "run",
        "--generate",
        str(events),
        "--seed",
        str(seed),
        "--rate",
        str(rate),
        "--probes-per-s",
        "0",
        "--no-live",
        "--format",
        "json",
        "--keep",
        "2",
    ]


def _run_command(ctx_obj: click.Context | None, args: list[str]) -> list[str]:
    command = [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())"]
    config = ctx_obj.find_root().params.get("config") if ctx_obj else None
    return [*command, *(["--config", str(config)] if config else []), *args]


def _find_run_dir(
    settings: Settings, pid: int, child: subprocess.Popen[bytes], timeout_s: float
) -> Path | None:
    from services.paths import data_dir

    root = data_dir(settings) / "shadow"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        for path in root.glob("r*/run.json"):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                if json.loads(path.read_text()).get("owner_pid") == pid:
                    return path.parent
        time.sleep(0.5)
    return None


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def run_fault(
    settings: Settings,
    fault: str,
    events: int,
    rate: float,
    seed: int,
    ctx_obj: click.Context | None = None,
    drain_timeout_s: float = 300.0,
    say: Callable[[str], None] = lambda _m: None,
) -> FaultRow:
    """One shadow run with `fault` injected once a third of the events are published."""
    row = FaultRow(fault)
    args = [*_shadow_args(events, seed, rate), "--drain-timeout-s", str(drain_timeout_s)]
    child = subprocess.Popen(
        _run_command(ctx_obj, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    output: list[bytes] = []
    reader = threading.Thread(
        target=lambda: output.append(child.stdout.read()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    run_dir = _find_run_dir(settings, child.pid, child, 600)
    injected_at = None
    if run_dir is not None:
        ctx = Target(settings, run_dir, child)
        row.run_id = run_dir.name
        while child.poll() is None and _lines(run_dir / "events.jsonl") < events // 3:
            time.sleep(0.2)
        if child.poll() is None:
            inject = FAULTS[fault]
            injected_at = time.time()
            say(f"{fault}: injecting at {_lines(run_dir / 'events.jsonl')} events published")
            try:
                row.injected = inject(ctx) if inject else "nothing"
            except Exception as exc:  # the bench reports it, the run goes on
                row.injected = f"injection failed: {type(exc).__name__}: {exc}"
    try:
        child.wait(timeout=drain_timeout_s + 900)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(60)
        row.error = "the run hung: no exit after its drain timeout + 15 min (SIGTERMed)"
    reader.join(60)
    row.exit_code = child.returncode
    with contextlib.suppress(json.JSONDecodeError, IndexError):
        result = json.loads(output[0])
        row.error = row.error or result.get("error")
        audits = [
            f"{a['date']} {a['outcome']} (legacy {a['legacy_minus_truth']:+}, abacus "
            f"{a['abacus_minus_truth']:+})"
            for a in result.get("audits", [])
        ]
        row.note = "audits: " + "; ".join(audits) if audits else ""
    if row.exit_code is not None and row.exit_code < 0:
        row.error = row.error or f"killed by signal {-row.exit_code}"
    if run_dir is None:
        row.error = row.error or "the run never wrote its run.json"
        return row
    doc = Target(settings, run_dir, child).doc()
    if injected_at is not None and doc.get("stopped_at") and row.exit_code == 0:
        row.recovered_s = round(float(doc["stopped_at"]) - injected_at, 1)
    _count(settings, doc, run_dir, row)
    if fault == "shadow-run-kill":
        _rerun_cleans_up(settings, doc, events, rate, seed, ctx_obj, row, say)
    return row


def _count(settings: Settings, doc: dict[str, Any], run_dir: Path, row: FaultRow) -> None:
    """published, counted, over, under and dead letters of each pipeline, from the stores."""
    import storage
    from counting import AccountKey, CustomerKey, Recount
    from shadow import restores

    run_settings = _run_settings(settings, doc)
    recount = Recount()
    published = 0
    with (run_dir / "events.jsonl").open(encoding="utf-8", errors="surrogateescape") as log:
        for line in log:
            published += 1
            recount.add_raw(line.rstrip("\n"))
    row.published = published
    customers = {c.key: c.count for c in recount.customer()}
    truth_total = sum(customers.values()) + sum(c.count for c in recount.account())
    truth: dict[AccountKey | CustomerKey, int] = {
        k: n for k, n in customers.items() if k.resolution == "day"
    }
    session = storage.connect(run_settings.cassandra)
    try:
        for name, out in (("legacy", row.legacy), ("shadow", row.abacus)):
            store = storage.CounterStore(storage.Prepared(session), run_settings.cassandra, name)
            stored = {c.key: c.count for c in store.scan("customer")}
            # count increments over the truth, both levels, every resolution: what the
            # re-applied and uncertain figures are measured in
            out["excess"] = (
                sum(stored.values()) + sum(c.count for c in store.scan("account")) - truth_total
            )
            got = {k: n for k, n in stored.items() if k.resolution == "day"}
            out["counted"] = sum(got.values())
            out["over"] = sum(
                max(0, got.get(k, 0) - truth.get(k, 0)) for k in got.keys() | truth.keys()
            )
            out["under"] = sum(
                max(0, truth.get(k, 0) - got.get(k, 0)) for k in got.keys() | truth.keys()
            )
    finally:
        session.cluster.shutdown()
    row.legacy["dead"] = _queue_depth(run_settings, run_settings.rabbitmq.dead_letter_queue)
    # left in RabbitMQ when the run ended (a run that failed stops consuming): not lost
    row.legacy["queued"] = _queue_depth(run_settings, run_settings.rabbitmq.legacy_queue)
    row.abacus["queued"] = _queue_depth(run_settings, run_settings.rabbitmq.shadow_queue)
    row.abacus["dead"] = _abacus_dead_letters(run_settings, run_dir)
    reapplied = uncertain = 0
    for name in (doc.get("jobs") or {}).values():
        # every process of the job in the run (a restarted job keeps its earlier ones)
        counts = restores.job_increments(run_settings, name)
        reapplied += counts.reapplied
        uncertain += counts.uncertain
    row.abacus["reapplied"], row.abacus["uncertain"] = reapplied, uncertain
    with contextlib.suppress(Exception):  # Redis unreachable: the figure is missing
        stats = _legacy_stats(run_settings)
        if killed := stats.get("chaos_killed_flushes", 0):
            # written by a killed flusher and not deleted, so written again: legacy's excess
            row.legacy["reapplied"] = stats.get("chaos_unconfirmed_count", 0)
            row.legacy["killed_flushers"] = killed


def _queue_depth(settings: Settings, queue: str) -> int:
    """Messages ready in a RabbitMQ queue (-1 when it cannot be read)."""
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(settings.rabbitmq.url()) as conn:
        channel = conn.channel()
        _, ready, _ = channel.queue_declare(queue=queue, passive=True)
        return int(ready)
    return -1


def _abacus_dead_letters(settings: Settings, run_dir: Path) -> int:
    from confluent_kafka import Consumer, TopicPartition

    bridge = 0
    with contextlib.suppress(OSError, json.JSONDecodeError):
        status = json.loads((run_dir / "bridge.json").read_text())
        bridge = sum(status.get("dead_lettered_by_reason", {}).values())
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "bench-faults"})
    try:
        topic = settings.kafka.dlq_topic
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return bridge
        records = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            records += high - low
        return bridge + records
    finally:
        consumer.close()


def _rerun_cleans_up(
    settings: Settings,
    doc: dict[str, Any],
    events: int,
    rate: float,
    seed: int,
    ctx_obj: click.Context | None,
    row: FaultRow,
    say: Callable[[str], None],
) -> None:
    """After `shadow run` was SIGKILLed: a second run must stop what the first left."""
    from abacus import manager
    from services import procs

    run_settings = _run_settings(settings, doc)
    left = [p for p in doc.get("pids", []) if procs.alive(p)]
    jobs = [
        n
        for n in (doc.get("jobs") or {}).values()
        if (s := manager.status(run_settings, n)) is not None and s.status in manager.RUNNING
    ]
    say(f"shadow-run-kill: left running {len(left)} component(s), {len(jobs)} job(s); a second run")
    second = subprocess.run(
        _run_command(
            ctx_obj,
            _shadow_args(max(events // 4, 50), seed + 1, rate),
        ),
        capture_output=True,
        check=False,
    )
    still = [p for p in left if procs.alive(p)]
    still_jobs = [
        n
        for n in jobs
        if (s := manager.status(run_settings, n)) is not None and s.status in manager.RUNNING
    ]
    cleaned = (
        f"left by the kill: {len(left)} component(s), {len(jobs)} job(s); the next "
        f"run exited {second.returncode} and left {len(still)} component(s), "
        f"{len(still_jobs)} job(s) of the killed run running"
    )
    row.note = f"{row.note}; {cleaned}" if row.note else cleaned


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


@click.command("faults")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(list(FAULTS)),
    help="Faults to run (default: all, in the listed order).",
)
@click.option(
    "--events",
    type=click.IntRange(min=60),
    default=600,
    show_default=True,
    help="Events published per run.",
)
@click.option("--rate", type=click.FloatRange(min=1), default=20.0, show_default=True)
@seed(5)
@click.option("--drain-timeout-s", type=click.FloatRange(min=10), default=300.0, show_default=True)
@file_path("--json-out", help="Also write the rows as JSON.")
@click.pass_context
def bench_faults(
    ctx: click.Context,
    faults: tuple[str, ...],
    events: int,
    rate: float,
    seed: int,
    drain_timeout_s: float,
    json_out: Path | None,
) -> None:
    """Fault x pipeline: events published, counted, over, under, dead-lettered, recovery.

    One shadow run per fault, injected once a third of the events are published. Kills and
    restarts servers: use a private server set (see tests/faults/conftest.py).
    """
    settings: Settings = ctx.obj
    rows = []
    for fault in faults or tuple(FAULTS):
        began = time.monotonic()
        row = run_fault(
            settings,
            fault,
            events,
            rate,
            seed,
            ctx,
            drain_timeout_s,
            say=lambda m: click.echo(m, err=True),
        )
        click.echo(
            f"{fault}: exit {row.exit_code} after {time.monotonic() - began:.0f} s"
            + (f" ({row.error})" if row.error else ""),
            err=True,
        )
        rows.append(row)
        if json_out:
            json_out.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    render(rows, events, rate)


def render(rows: list[FaultRow], events: int, rate: float) -> None:
    """The table: a row per fault and pipeline."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"faults: {events} events at {rate:g}/s per run, fault at a third")
    for column in (
        "fault",
        "pipeline",
        "published",
        "counted",
        "over",
        "under",
        "dead",
        "queued",
        "excess",
        "re-applied",
        "uncertain",
        "recovered",
        "outcome",
    ):
        table.add_column(column, no_wrap=column != "outcome")
    for row in rows:
        outcome = ((row.error or "").splitlines() or [f"exit {row.exit_code}"])[0][:90]
        for name, figures in (("legacy", row.legacy), ("abacus", row.abacus)):
            table.add_row(
                *map(
                    escape,
                    [
                        row.fault if name == "legacy" else "",
                        name,
                        _cell(row.published),
                        _cell(figures.get("counted")),
                        _cell(figures.get("over")),
                        _cell(figures.get("under")),
                        _cell(figures.get("dead")),
                        _cell(figures.get("queued")),
                        _cell(figures.get("excess")),
                        _cell(figures.get("reapplied"))
                        if name == "abacus" or "reapplied" in figures
                        else "",
                        _cell(figures.get("uncertain")) if name == "abacus" else "",
                        f"{row.recovered_s:.0f} s" if row.recovered_s is not None else "-",
                        (
                            outcome
                            + ("; " + row.injected if row.injected else "")
                            + ("; " + row.note if row.note else "")
                        )
                        if name == "legacy"
                        else "",
                    ],
                )
            )
    Console(width=200).print(table)
