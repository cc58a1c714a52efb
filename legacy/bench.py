"""`abacus bench legacy`: the baseline Abacus must beat, run the way a competent team ran it.

Prefork workers with acks late and a prefetch window, pipelined Redis calls (one round trip
for Check Uniques, one for Big Bertha), customer counters through the driver's concurrent
execution, a 1 s Big Bertha flush. Figures: sustained events/s (publish of the first event
to the last count visible in Cassandra), and the latency from publish to visible (the
customer write done and the Big Bertha flush that carried the event's increments written),
p50/p99, once unthrottled (the queue builds up: latency is queueing) and once at a steady
rate below capacity. Isolated: its own queues, Redis prefix and keyspace prefix.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import click

from counting.generate import GeneratorConfig, generate
from counting.stats import percentile
from legacy.app import WorkerOptions
from legacy.cli import worker_options
from legacy.producer import publish_lines
from legacy.resources import teardown
from legacy.status import read_status, wait_drained
from legacy.trace import Traces
from legacy.worker import start_flusher, start_worker
from services.procs import cpu_seconds
from settings import Settings
from settings.options import output_format, seed
from storage import resources as storage_resources


def bench_settings(settings: Settings, tag: str) -> Settings:
    """The settings of an isolated benchmark installation."""
    rabbit = settings.rabbitmq
    return settings.model_copy(
        update={
            "cassandra": settings.cassandra.model_copy(
                update={"keyspace_prefix": settings.cassandra.keyspace_prefix + "bench_"}
            ),
            "redis": settings.redis.model_copy(
                update={"prefix": f"{settings.redis.prefix}bench:{tag}:"}
            ),
            "rabbitmq": rabbit.model_copy(
                update={
                    "exchange": f"{rabbit.exchange}.bench.{tag}",
                    "legacy_queue": f"{rabbit.legacy_queue}.bench.{tag}",
                    "shadow_queue": f"{rabbit.shadow_queue}.bench.{tag}",
                    "dead_letter_queue": f"{rabbit.dead_letter_queue}.bench.{tag}",
                }
            ),
        }
    )


def _ms(value_s: float | None) -> float | None:
    return None if value_s is None else round(value_s * 1000, 1)


def _phase(
    settings: Settings,
    lines: list[str],
    rate: float,
    trace_dir: Path,
    timeout_s: float,
    pids: list[int],
) -> dict[str, Any]:
    cpu_before = [cpu_seconds(pid) for pid in pids]
    report = publish_lines(settings.rabbitmq, lines, rate=rate, keep_ids=True)
    wait_drained(settings, timeout_s=timeout_s, poll_s=0.2)
    worker_cpu, flusher_cpu = (
        cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)
    )
    visible = Traces.read(trace_dir).visible_at()
    latencies = sorted(
        visible[t] - p
        for t, p in zip(report.task_ids, report.published_at, strict=True)
        if t in visible
    )
    missing = len(report.task_ids) - len(latencies)
    first = report.published_at[0]
    last = max((visible[t] for t in report.task_ids if t in visible), default=first)
    return {
        "events": len(lines),
        "rate_target": rate,
        "publish_rate": round(report.rate, 1),
        "sustained_events_per_s": round(len(latencies) / (last - first), 1)
        if last > first
        else None,
        "latency_p50_ms": _ms(percentile(latencies, 0.50)),
        "latency_p99_ms": _ms(percentile(latencies, 0.99)),
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "untraced": missing,
        "worker_cpu_ms_per_event": round(worker_cpu / len(lines) * 1000, 2),
        "flusher_cpu_ms_per_event": round(flusher_cpu / len(lines) * 1000, 2),
    }


def run_legacy_bench(
    settings: Settings,
    lines: list[str],
    *,
    concurrency: int = 2,
    pool: str = "prefork",
    prefetch_multiplier: int = 16,
    flush_interval_s: float = 1.0,
    rate: float = 0.0,
    latency_rate: float | None = None,
    latency_events: int = 0,
    warmup: int = 200,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run legacy on `lines` (raw events) in an isolated installation; its figures.

    Phase 1 publishes `lines` at `rate` (0: unthrottled) and measures sustained events/s
    and latency. Phase 2, if `latency_events`, publishes that many of the lines again at
    `latency_rate` (default: half the sustained rate) to measure latency below capacity.
    """
    tag = uuid.uuid4().hex[:8]
    isolated = bench_settings(settings, tag)
    figures: dict[str, Any] = {
        "parameters": {
            "events": len(lines),
            "concurrency": concurrency,
            "pool": pool,
            "prefetch_multiplier": prefetch_multiplier,
            "flush_interval_s": flush_interval_s,
            "flusher": "process",
            "rate": rate,
            "workers": 1,
            "acks_late": True,
            "warmup_events": warmup,
            "load_1m_at_start": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    }
    storage_resources.provision(isolated, ["legacy"])
    with tempfile.TemporaryDirectory(prefix="legacy-bench-") as tmp:
        trace_dir = Path(tmp) / "trace"
        options = WorkerOptions(
            concurrency=concurrency,
            pool=pool,
            prefetch_multiplier=prefetch_multiplier,
            flush_interval_s=0,
            trace_dir=trace_dir,
        )
        worker = start_worker(isolated, options, Path(tmp) / "worker.log")
        flusher = start_flusher(
            isolated, Path(tmp) / "flusher.log", flush_interval_s, trace_dir=trace_dir
        )
        pids = [worker.pid, flusher.pid]
        try:
            if warmup:  # every pool process connects to Redis and Cassandra first
                publish_lines(isolated.rabbitmq, lines[:warmup])
                wait_drained(isolated, timeout_s=timeout_s, poll_s=0.2)
            for process in (worker, flusher):
                if not process.alive():
                    raise RuntimeError(f"a legacy process died:\n{process.log_tail()}")
            figures["throughput"] = _phase(isolated, lines, rate, trace_dir, timeout_s, pids)
            if latency_events:
                sustained = figures["throughput"]["sustained_events_per_s"] or 100.0
                steady = latency_rate or round(sustained / 2, 1)
                figures["latency"] = _phase(
                    isolated, lines[:latency_events], steady, trace_dir, timeout_s, pids
                )
            figures["stats"] = read_status(isolated, ask_workers=False).stats
        finally:
            worker.stop()
            flusher.stop()
            teardown(isolated)
    return figures


@click.command("legacy")
@click.option("--events", "n", type=click.IntRange(min=100), default=3_000, show_default=True)
@seed(7)
@worker_options()
@click.option("--flush-interval-s", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Publish rate of the throughput phase (0: unthrottled).",
)
@click.option(
    "--latency-events",
    type=click.IntRange(min=0),
    default=600,
    show_default=True,
    help="Events of the steady-rate latency phase (0: skip it).",
)
@click.option(
    "--latency-rate",
    type=click.FloatRange(min=1),
    default=None,
    help="Rate of the latency phase (default: half the sustained rate).",
)
@output_format("text", "json")
@click.pass_obj
def bench_legacy(
    settings: Settings,
    n: int,
    seed: int,
    concurrency: int,
    pool: str,
    prefetch_multiplier: int,
    flush_interval_s: float,
    rate: float,
    latency_events: int,
    latency_rate: float | None,
    fmt: str,
) -> None:
    """Legacy's sustained events/s and publish-to-visible latency (p50/p99)."""
    config = GeneratorConfig(n=n, seed=seed)  # the generator's default mix
    lines = [json.dumps(e, ensure_ascii=False) for e in generate(config)]
    try:
        figures = run_legacy_bench(
            settings,
            lines,
            concurrency=concurrency,
            pool=pool,
            prefetch_multiplier=prefetch_multiplier,
            flush_interval_s=flush_interval_s,
            rate=rate,
            latency_rate=latency_rate,
            latency_events=min(latency_events, n),
        )
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"bench legacy: {exc}") from None
    figures["parameters"]["generator"] = {
        "n": n,
        "seed": seed,
        "companies": config.companies,
        "customers": config.customers,
        "facets": config.facets,
    }
    if fmt == "json":
        click.echo(json.dumps(figures))
        return
    p = figures["parameters"]
    click.echo(
        f"legacy: {p['events']} generated events (seed {seed}, {config.facets} facets, "
        f"{config.companies} companies), 1 worker, {p['pool']} x{p['concurrency']}, "
        f"prefetch x{p['prefetch_multiplier']}, acks late, Big Bertha flusher process "
        f"every {p['flush_interval_s']} s; machine load {p['load_1m_at_start']} "
        f"on {p['cpus']} CPUs at start"
    )
    for phase in ("throughput", "latency"):
        if phase in figures:
            f = figures[phase]
            target = f"{f['rate_target']:g}/s" if f["rate_target"] else "unthrottled"
            click.echo(
                f"  {phase:<10} {f['events']:>6} events published {target:<12} "
                f"sustained {f['sustained_events_per_s']} ev/s   publish->visible "
                f"p50 {f['latency_p50_ms']} ms  p99 {f['latency_p99_ms']} ms  "
                f"max {f['latency_max_ms']} ms   CPU/event: worker "
                f"{f['worker_cpu_ms_per_event']} ms, flusher "
                f"{f['flusher_cpu_ms_per_event']} ms"
            )
