"""`abacus bench abacus`: both milestone-1 jobs together, beside legacy on the same events.

Figures:
- sustained events/s through both jobs: a backlog of generated events (the default mix) is
  produced to Kafka at full speed; the clock runs from the first produce to the moment both
  jobs' sinks have written every count increment of the backlog (their drain counters,
  `abacus.progress`, reach the recount's totals);
- freshness at a steady rate (default 1,000 events/s): probe events ride along the load,
  each on a date of its own; freshness = Kafka's append time (LogAppendTime) to the moment
  the probe's counter is readable in Cassandra, for each job, p50/p99;
- RSS of each job (its runner and JVM, sampled);
- legacy on the same events (`legacy.bench.run_legacy_bench`) and the ratio.

Isolated: its own topic, keyspace prefix and job names; all removed or stopped at the end.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from abacus import manager, progress
from abacus import resources as abacus_resources
from abacus.cli import job_option
from abacus.environment import Memory
from abacus.manager import RunOptions
from bridge import resources as bridge_resources
from bridge.decode import key_of
from counting import Recount
from counting.generate import GeneratorConfig, generate
from counting.stats import percentile
from settings import Settings
from settings.options import output_format, seed
from storage import resources as storage_resources

PROBE_COMPANY, PROBE_STATISTIC = "PROBE", "probe"
PROBE_EPOCH_S = 978_307_200  # 2001-01-01T00:00:00Z: probe i counts on the date epoch + i days


def _isolated(settings: Settings, tag: str) -> Settings:
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"topic": f"bench.{tag}.events", "dlq_topic": f"bench.{tag}.dlq"}
            ),
            "cassandra": settings.cassandra.model_copy(
                update={"keyspace_prefix": f"{settings.cassandra.keyspace_prefix}bench_{tag}_"}
            ),
        }
    )


def _prepare(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka.client_config())
    durable = {"min.insync.replicas": str(settings.kafka.min_insync_replicas)}
    config = {"message.timestamp.type": "LogAppendTime", **durable}
    futures = admin.create_topics(
        [
            NewTopic(settings.kafka.topic, settings.kafka.partitions, 1, config=config),
            NewTopic(settings.kafka.dlq_topic, 1, 1, config=durable),
        ]
    )
    for future in futures.values():
        future.result()
    storage_resources.provision(settings, ["shadow"])


def _cleanup(settings: Settings, prefix: str) -> None:
    """The topics (the bridge's), the shadow keyspace (storage's), the jobs' files and
    checkpoints (abacus's): each removed by its owner."""
    bridge_resources.delete_topics(settings)
    storage_resources.teardown(settings, ["shadow"])
    abacus_resources.teardown(settings, prefix, "shadow")


class _Producer:
    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.kafka.topic
        self._producer = Producer(
            {
                **settings.kafka.client_config(),
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
            }
        )

    def send(self, line: str, on_delivery: Any = None) -> None:
        key = key_of(line) or None  # keyed as the bridge keys them
        while True:
            try:
                self._producer.produce(
                    self.topic, value=line.encode(), key=key, on_delivery=on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self) -> None:
        self._producer.flush(120)


def _group_stats(pgid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a process group (a job: its runner and JVM)."""
    rss, ticks = 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            if int(fields[2]) == pgid:
                rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
                ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return rss, ticks / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """CPU seconds of one process (user + system)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Cpu:
    """CPU seconds spent by each job (process group) and each local server while events
    flow: where the machine's two cores go, per event."""

    def __init__(self, settings: Settings, jobs: dict[str, int]) -> None:
        from services.manager import services

        self._jobs = jobs
        self._servers = {
            s.name: pid
            for s in services(settings, ["cassandra", "kafka"])
            if (pid := s.pid()) is not None
        }
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        out = {kind: _group_stats(pgid)[1] for kind, pgid in self._jobs.items()}
        out.update({name: _cpu_s(pid) for name, pid in self._servers.items()})
        return out

    def per_event_us(self, events: int) -> dict[str, float]:
        end = self._sample()
        return {k: round((end[k] - self._start[k]) / events * 1e6) for k in end}


class _Rss:
    """Peak RSS of each job's process group (runner + JVM), sampled every 0.5 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids, self.peak_mb = pids, dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in self.pids.items():
                self.peak_mb[name] = max(self.peak_mb[name], _group_stats(pid)[0] / 2**20)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v) for k, v in self.peak_mb.items()}


@dataclass(frozen=True, slots=True)
class _Targets:
    account: int  # count increments the statistic job must write
    customer: int


def _targets(lines: list[str]) -> _Targets:
    recount = Recount()
    for line in lines:
        recount.add_raw(line)
    return _Targets(
        sum(c.count for c in recount.account()), sum(c.count for c in recount.customer())
    )


def _written(settings: Settings, names: dict[str, str]) -> dict[str, int]:
    out = {}
    for kind, name in names.items():
        state = manager.status(settings, name)
        assert state is not None
        out[kind] = progress.read(Path(state.progress_dir)).written
    return out


def _throughput(
    settings: Settings,
    names: dict[str, str],
    lines: list[str],
    timeout_s: float,
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    targets = _targets(lines)
    cpu = _Cpu(settings, pids) if pids else None
    before = _written(settings, names)
    want = {
        "statistic": before["statistic"] + targets.account,
        "customer": before["customer"] + targets.customer,
    }
    producer = _Producer(settings)
    started = time.monotonic()
    for line in lines:
        producer.send(line)
    producer.flush()
    produced_s = time.monotonic() - started
    done: dict[str, float] = {}
    deadline = started + timeout_s
    while len(done) < len(names):
        written = _written(settings, names)
        for kind in names:
            if kind not in done and written[kind] >= want[kind]:
                done[kind] = time.monotonic() - started
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all written after {timeout_s:.0f}s: {written} of {want}")
        time.sleep(0.05)
    elapsed = max(done.values())
    out = {
        "events": len(lines),
        "produce_s": round(produced_s, 2),
        "elapsed_s": round(elapsed, 2),
        "events_per_s": round(len(lines) / elapsed, 1),
        "per_job_events_per_s": {k: round(len(lines) / v, 1) for k, v in done.items()},
        "increments": {"account": targets.account, "customer": targets.customer},
    }
    if cpu is not None:
        # CPU per event of each part: with 2 cores, 2e6 / (sum of us/event) is the rate this
        # machine could sustain if nothing else ran and nothing waited
        us = out["cpu_us_per_event"] = cpu.per_event_us(len(lines))
        out["cpu_ceiling_events_per_s"] = round(
            (os.cpu_count() or 1) * 1e6 / max(1, sum(us.values()))
        )
        if "cassandra" in us:
            out["cassandra_ceiling_events_per_s"] = round(
                (os.cpu_count() or 1) * 1e6 / max(1, us["cassandra"])
            )
    return out


def _probe_line(i: int) -> str:
    return json.dumps(
        {
            "event_id": f"probe-{uuid.uuid4().hex}",
            "company_id": PROBE_COMPANY,
            "customer_id": f"PRB-{i}",
            "statistic_id": PROBE_STATISTIC,
            "timestamp": PROBE_EPOCH_S + i * 86_400,
            "timezone": "UTC",
        }
    )


def _freshness(
    settings: Settings, lines: list[str], rate: float, probes_per_s: float, timeout_s: float
) -> dict[str, Any]:
    import storage
    from counting import bucket_labels

    session = storage.connect(settings.cassandra)
    store = storage.CounterStore(storage.Prepared(session), settings.cassandra, "shadow")
    appended: dict[int, float] = {}  # probe -> Kafka append time (s)
    visible: dict[str, dict[int, float]] = {"statistic": {}, "customer": {}}
    lock = threading.Lock()
    stop = threading.Event()

    def on_probe(i: int) -> Any:
        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                with lock:
                    appended[i] = msg.timestamp()[1] / 1000

        return delivered

    def poll() -> None:
        while not stop.is_set() or any(len(v) < len(appended) for v in visible.values()):
            with lock:
                pending = list(appended)
            for i in pending:
                day = bucket_labels(PROBE_EPOCH_S + i * 86_400, "UTC")[1]
                if i not in visible["statistic"] and any(
                    store.read_account_range(PROBE_COMPANY, PROBE_STATISTIC, "day", day, day)
                ):
                    visible["statistic"][i] = time.time()
                if i not in visible["customer"] and any(store.read_date(day, "customer")):
                    visible["customer"][i] = time.time()
            if stop.is_set() and time.monotonic() > stop_deadline[0]:
                return
            time.sleep(0.02)

    stop_deadline = [float("inf")]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    producer = _Producer(settings)
    every = max(1, round(rate / probes_per_s))
    started = time.monotonic()
    probe = 0
    try:
        for n, line in enumerate(lines):
            due = started + n / rate
            while (now := time.monotonic()) < due:
                time.sleep(min(due - now, 0.005))
            if n % every == 0:
                producer.send(_probe_line(probe), on_delivery=on_probe(probe))
                probe += 1
            producer.send(line)
        producer.flush()
        achieved = len(lines) / (time.monotonic() - started)
        stop_deadline[0] = time.monotonic() + timeout_s
        stop.set()
        poller.join()
    finally:
        stop.set()
        session.cluster.shutdown()
    out: dict[str, Any] = {
        "events": len(lines),
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "probes": probe,
    }
    for kind, seen in visible.items():
        lat = [seen[i] - appended[i] for i in seen if i in appended]
        out[kind] = {
            "p50_ms": _ms(percentile(lat, 0.5)),
            "p99_ms": _ms(percentile(lat, 0.99)),
            "max_ms": _ms(max(lat, default=None)),
            "seen": len(lat),
        }
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _lines(seed: int, n: int) -> list[str]:
    """n events of the generator's default mix; every seed has its own event ids."""
    return [json.dumps(e, ensure_ascii=False) for e in generate(GeneratorConfig(n=n, seed=seed))]


def run_abacus_bench(
    settings: Settings,
    lines: list[str],
    *,
    window_ms: int,
    latency_rate: float,
    latency_events: int,
    probes_per_s: float,
    memory: Memory,
    parallelism: int,
    warmup: int = 500,
    timeout_s: float = 600,
    seed: int = 7,
) -> dict[str, Any]:
    """Both jobs on `lines` in an isolated installation; their figures. The warm-up and the
    freshness phase use other events (other seeds): a repeated event_id is a duplicate."""
    tag = uuid.uuid4().hex[:8]
    isolated = _isolated(settings, tag)
    prefix = f"bench-{tag}-"
    figures: dict[str, Any] = {
        "parameters": {
            "events": len(lines),
            "warmup_events": warmup,
            "window_ms": window_ms,
            "parallelism": parallelism,
            "heap_mb": memory.heap_mb,
            "managed_mb": memory.managed_mb,
            "checkpoint_interval_ms": settings.flink.checkpoint_interval_ms,
            "load_1m_at_start": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    }
    _prepare(isolated)
    options = RunOptions(
        prefix=prefix, window_ms=window_ms, parallelism=parallelism, memory=memory, resume=False
    )
    try:
        t0 = time.monotonic()
        states = manager.start_jobs(isolated, "shadow", options)
        figures["start_s"] = round(time.monotonic() - t0, 1)
        names = {s.kind: s.name for s in states}
        rss = _Rss({s.kind: s.pid for s in states if s.pid})
        try:
            if warmup:
                _throughput(isolated, names, _lines(seed + 1000, warmup), timeout_s)
            figures["throughput"] = _throughput(
                isolated, names, lines, timeout_s, {s.kind: s.pid for s in states if s.pid}
            )
            if latency_events:
                figures["freshness"] = _freshness(
                    isolated,
                    _lines(seed + 2000, latency_events),
                    latency_rate,
                    probes_per_s,
                    timeout_s=30,
                )
        finally:
            figures["rss_mb"] = rss.stop()
    finally:
        manager.stop_jobs(isolated, "shadow", prefix)
        _cleanup(isolated, prefix)
    return figures


@click.command("abacus")
@click.option(
    "--events",
    "n",
    type=click.IntRange(min=100),
    default=120_000,
    show_default=True,
    help="Events of the measured throughput phase.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=30_000,
    show_default=True,
    help="Events through both jobs before the clock starts (other event ids): the "
    "JVMs' JIT compiles the hot paths in the first ~10 s.",
)
@seed(7)
@job_option(
    "window_ms",
    250,
    help="How often the sinks write their sums (flink.window_ms, 1 s by default; "
    "a freshness under 1 s needs writes more often than that).",
)
@click.option("--latency-rate", type=click.FloatRange(min=1), default=1000.0, show_default=True)
@click.option(
    "--latency-events",
    type=click.IntRange(min=0),
    default=30_000,
    show_default=True,
    help="Events of the steady-rate freshness phase (0: skip).",
)
@click.option("--probes-per-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@job_option("parallelism", 1)
@job_option("heap_mb", 640)
@job_option("managed_mb", 192)
@click.option(
    "--legacy-events",
    type=click.IntRange(min=0),
    default=6_000,
    show_default=True,
    help="The first N of the same events through legacy (0: skip legacy).",
)
@output_format("text", "json")
@click.pass_obj
def bench_abacus(
    settings: Settings,
    n: int,
    seed: int,
    window_ms: int,
    latency_rate: float,
    latency_events: int,
    probes_per_s: float,
    parallelism: int,
    heap_mb: int,
    managed_mb: int,
    legacy_events: int,
    warmup: int,
    fmt: str,
) -> None:
    """Both Abacus jobs: sustained events/s, freshness p50/p99 at a steady rate, RSS; legacy
    on the same events, and the ratio."""
    lines = _lines(seed, n)  # the generator's default mix
    try:
        figures = run_abacus_bench(
            settings,
            lines,
            window_ms=window_ms,
            latency_rate=latency_rate,
            latency_events=min(latency_events, n),
            probes_per_s=probes_per_s,
            memory=Memory(heap_mb=heap_mb, managed_mb=managed_mb),
            parallelism=parallelism,
            warmup=warmup,
            seed=seed,
        )
    except (TimeoutError, manager.JobError, FileNotFoundError) as exc:
        raise click.ClickException(f"bench abacus: {exc}") from None
    legacy = _legacy(settings, lines[:legacy_events]) if legacy_events else None
    figures["legacy"] = legacy
    if legacy and legacy.get("throughput", {}).get("sustained_events_per_s"):
        figures["ratio"] = round(
            figures["throughput"]["events_per_s"] / legacy["throughput"]["sustained_events_per_s"],
            1,
        )
    if fmt == "json":
        click.echo(json.dumps(figures))
        return
    _render(figures, seed)


def _legacy(settings: Settings, lines: list[str]) -> dict[str, Any] | None:
    try:
        from legacy.bench import run_legacy_bench
    except ImportError:
        return {"error": "legacy.bench.run_legacy_bench is not available"}
    try:
        return run_legacy_bench(settings, lines, latency_events=0)
    except Exception as exc:  # legacy's failure must not hide Abacus's figures
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def _render(figures: dict[str, Any], seed: int) -> None:
    p = figures["parameters"]
    click.echo(
        f"abacus M1: {p['events']} generated events (default mix, seed {seed}; after "
        f"{p['warmup_events']} warm-up events), both "
        f"jobs, writes every {p['window_ms']} ms, parallelism "
        f"{p['parallelism']}, heap {p['heap_mb']} MiB + managed {p['managed_mb']} MiB "
        f"per job, checkpoints every {p['checkpoint_interval_ms']} ms; machine load "
        f"{p['load_1m_at_start']} on {p['cpus']} CPUs at start; jobs started in "
        f"{figures.get('start_s')} s"
    )
    t = figures["throughput"]
    click.echo(
        f"  throughput  {t['events']} events: {t['events_per_s']} events/s through "
        f"both jobs (statistic {t['per_job_events_per_s'].get('statistic')}, customer "
        f"{t['per_job_events_per_s'].get('customer')}); produced in {t['produce_s']} s, "
        f"all written after {t['elapsed_s']} s"
    )
    if "cpu_us_per_event" in t:
        parts = ", ".join(f"{k} {v}" for k, v in t["cpu_us_per_event"].items())
        click.echo(
            f"  CPU/event   {parts} us; all of it on {p['cpus']} cores: at most "
            f"{t['cpu_ceiling_events_per_s']} events/s on this machine "
            f"(Cassandra's counter writes alone: "
            f"{t.get('cassandra_ceiling_events_per_s')} events/s)"
        )
    f = figures.get("freshness")
    if f:
        click.echo(
            f"  freshness   {f['events']} events at {f['rate_achieved']}/s "
            f"(target {f['rate_target']:g}), {f['probes']} probes, Kafka append -> "
            f"readable in Cassandra:"
        )
        for kind in ("statistic", "customer"):
            k = f[kind]
            click.echo(
                f"    {kind:<10} p50 {k['p50_ms']} ms  p99 {k['p99_ms']} ms  "
                f"max {k['max_ms']} ms  ({k['seen']} probes seen)"
            )
    click.echo(f"  RSS peak    {figures['rss_mb']} MiB (runner + JVM + Python, per job)")
    legacy = figures.get("legacy")
    if legacy is None:
        click.echo("  legacy      skipped")
    elif "error" in legacy:
        click.echo(f"  legacy      not measured: {legacy['error']}")
    else:
        lt = legacy["throughput"]
        click.echo(
            f"  legacy      {lt['events']} of the same events: "
            f"{lt['sustained_events_per_s']} events/s; publish->visible p50 "
            f"{lt['latency_p50_ms']} ms p99 {lt['latency_p99_ms']} ms (unthrottled)"
        )
        click.echo(f"  ratio       abacus / legacy = {figures.get('ratio')}x")
