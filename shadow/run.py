"""A shadow run: both pipelines side by side on the same events, drained, then audited.

    servers up -> prune old runs -> the run's installation (keyspaces, topics, queues)
    -> legacy worker + flusher, bridge (shadow), Abacus statistic + customer (target shadow)
    -> publish (event log + probes) -> every pipeline drained (detected) -> stop components
    -> one three-way audit per local date touched (legacy vs shadow, truth = the event log)
    -> HTML reports, throughput and latency side by side

Components are fresh for each run and all stopped at its end (Ctrl-C included); the servers
are reused and never stopped. See shadow/README.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compare import audit as compare_audit
from compare.report import render
from legacy.chaos import Chaos
from legacy.producer import PublishReport, publish_lines
from settings import Settings
from shadow import installation, monitor, restores
from shadow.components import Components, JobOptions, Restart, StartFailure
from shadow.installation import Installation
from shadow.probes import ProbeWatcher, probe_line
from shadow.stream import Stream, dates_touched, probe_timestamp

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
CONFIRMATIONS = 2


class RunFailed(Exception):
    """The run could not finish (a component died, a pipeline did not drain)."""


@dataclass(frozen=True)
class RunConfig:
    lines: Callable[[], Iterable[str | bytes]]  # the events to publish, raw lines
    rate: float = 0.0  # events/s; 0: as fast as the broker confirms
    duration_s: float | None = None  # stop publishing after this long
    chaos: Chaos = field(default_factory=Chaos)
    concurrency: int = 2  # legacy worker pool processes
    probes_per_s: float = 2.0  # 0: no probes, no latency figures
    html_dir: Path | None = None  # default: <run dir>/reports
    keep: int = 3  # earlier runs kept (their keyspaces, topics, queues); older are removed
    drain_timeout_s: float = 600.0
    jobs: JobOptions = field(default_factory=JobOptions)
    services: bool | None = None  # None: start local servers unless remote hosts are set


@dataclass
class DateAudit:
    date: str
    result: compare_audit.AuditResult
    html: Path


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    events_path: Path
    published: int = 0
    probes: int = 0
    audits: list[DateAudit] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    restarts: list[Restart] = field(default_factory=list)  # components the run restarted
    # kind -> what its restores wrote again (re-applied) or left of unknown fate (uncertain)
    increments: dict[str, restores.JobIncrements] = field(default_factory=dict)

    @property
    def reapplied(self) -> int:
        return sum(i.reapplied for i in self.increments.values())

    @property
    def uncertain(self) -> int:
        return sum(i.uncertain for i in self.increments.values())

    @property
    def explanation(self) -> str | None:
        """Why Abacus may be over the truth, when restores re-applied increments: milestone
        1 is at-least-once, so a restored job writes again what it wrote after its
        checkpoint. None when nothing was re-applied or left uncertain."""
        if not self.reapplied and not self.uncertain:
            return None
        over = sum(max(0, drift(a)["abacus_minus_truth"]) for a in self.audits)
        per_job = ", ".join(
            f"{k} {i.reapplied} re-applied + {i.uncertain} uncertain"
            for k, i in sorted(self.increments.items())
            if i.reapplied or i.uncertain
        )
        return (
            f"Abacus restores wrote {self.reapplied} count increments again and "
            f"{self.uncertain} more of unknown fate ({per_job}): milestone 1 is "
            f"at-least-once, so the shadow store is expected over the truth by "
            f"{self.reapplied} to {self.reapplied + self.uncertain} increments (both "
            f"levels, every resolution); the audits show Abacus {over:+} against the "
            f"truth"
        )

    @property
    def clean(self) -> bool:
        return (
            self.error is None
            and bool(self.audits)
            and all(a.result.outcome == "clean" for a in self.audits)
        )

    @property
    def exit_code(self) -> int:
        """0 every audit clean, 1 some audit dirty, 2 the run or an audit failed."""
        if (
            self.error is not None
            or not self.audits
            or any(a.result.exit_code == 2 for a in self.audits)
        ):
            return 2
        return 0 if self.clean else 1


class View:
    """What the run shows while it runs (the CLI's live view implements it)."""

    def phase(self, text: str) -> None: ...

    def update(
        self,
        sample: monitor.Sample,
        stream: Stream,
        total: int | None,
        watcher: ProbeWatcher | None,
    ) -> None: ...


def uses_local_servers(settings: Settings) -> bool:
    return (
        set(settings.cassandra.hosts) <= LOCAL_HOSTS
        and settings.kafka.bootstrap_servers.rsplit(":", 1)[0] in LOCAL_HOSTS
        and settings.rabbitmq.host in LOCAL_HOSTS
        and settings.redis.host in LOCAL_HOSTS
    )


def run_shadow(
    settings: Settings, config: RunConfig, view: View | None = None, total: int | None = None
) -> RunResult:
    """Run both pipelines on `config.lines()`, drain, audit; the result (never raises for a
    component or drain failure: `result.error` says what happened; KeyboardInterrupt stops
    everything this run started and propagates)."""
    view = view or View()
    if config.services if config.services is not None else uses_local_servers(settings):
        from services import manager as services

        view.phase("servers: starting what is not running")
        services.ensure_up(settings, services.NAMES)
    removed = installation.prune(settings, config.keep)
    if removed:
        view.phase(f"removed {len(removed)} old run(s): {', '.join(removed)}")
    inst = installation.create(settings)
    result = RunResult(inst.run_id, inst.run_dir, inst.events_path)
    view.phase(f"run {inst.run_id}: keyspaces, topics, queues")
    installation.prepare(inst)
    components = Components(inst)
    watcher: ProbeWatcher | None = None
    try:
        view.phase("starting legacy worker + flusher, bridge, Abacus statistic + customer")
        components.start(config.chaos, config.concurrency, config.jobs)
        ts_s = probe_timestamp(_head(config.lines(), 100))
        watcher = ProbeWatcher(inst.settings, ts_s)
        watcher.start()
        view.phase("warm-up: one probe through both pipelines")
        _warm_up(inst, components, watcher, ts_s, config.jobs.start_timeout_s)
        every = (
            max(1, round((config.rate or 200.0) / config.probes_per_s))
            if config.probes_per_s > 0
            else 0
        )
        stream = Stream(
            config.lines(),
            inst.events_path,
            inst.run_id,
            every,
            ts_s,
            watcher if every else None,
            config.duration_s,
            first_probe=1,
        )
        report, throughput = _publish_and_drain(
            inst, components, stream, config, view, total, watcher
        )
        result.published, result.probes = 1 + report.published, stream.probes
        result.figures["throughput"] = throughput
        view.phase("stopping the components")
    except (StartFailure, RunFailed, TimeoutError) as exc:
        result.error = str(exc)
        return result
    finally:
        if watcher is not None:
            watcher.stop(grace_s=0)
        problems = components.stop()
        result.restarts = list(components.restarts)
        result.increments = {
            kind: restores.job_increments(inst.settings, name)
            for kind, name in components.jobs.items()
        }
        inst.record(stopped_at=time.time(), stop_problems=problems)
    view.phase("auditing")
    result.audits = audit_run(inst, config.html_dir or inst.run_dir / "reports", view)
    result.figures["latency"] = _latency_figures(watcher)
    inst.record(result=summary(result))
    return result


def _warm_up(
    inst: Installation, components: Components, watcher: ProbeWatcher, ts_s: int, timeout_s: float
) -> None:
    """Publish probe 0 alone and wait until both stores show it: a job reported RUNNING may
    still be deploying its tasks, and the figures must not measure that start-up. The probe
    is in the event log like any event (the truth counts it); its latency is left out."""
    line = probe_line(inst.run_id, 0, ts_s)
    with inst.events_path.open("ab") as log:
        log.write(line.encode("utf-8") + b"\n")
    watcher.warmup.add(0)
    publish_lines(inst.settings.rabbitmq, [line])
    watcher.mark_published(0, time.time())
    deadline = time.monotonic() + timeout_s
    while not all(0 in seen for seen in watcher.seen.values()):
        components.supervise()
        if watcher.error:
            raise RunFailed(f"warm-up: {watcher.error}")
        if time.monotonic() > deadline:
            raise RunFailed(
                f"warm-up: the first event is not counted by both pipelines "
                f"after {timeout_s:.0f} s (seen: "
                f"{[n for n, seen in watcher.seen.items() if 0 in seen]})"
            )
        time.sleep(0.2)


def _head(lines: Iterable[str | bytes], n: int) -> list[str | bytes]:
    out = []
    for line in lines:
        out.append(line)
        if len(out) >= n:
            break
    return out


def _publish_and_drain(
    inst: Installation,
    components: Components,
    stream: Stream,
    config: RunConfig,
    view: View,
    total: int | None,
    watcher: ProbeWatcher | None,
) -> tuple[PublishReport, dict[str, Any]]:
    """Publish in a thread while sampling every stage; return once all have drained, with
    each pipeline's sustained events/s (first publish to its last count written)."""
    outcome: dict[str, Any] = {}

    def publish() -> None:
        try:
            outcome["report"] = publish_lines(
                inst.settings.rabbitmq, stream, config.rate, stream.on_progress
            )
        except Exception as exc:
            outcome["error"] = exc

    publisher = threading.Thread(target=publish, name="publisher", daemon=True)
    view.phase("publishing")
    publisher.start()
    finish = monitor.Finish()
    looping: set[str] = set()
    streak = {name: 0 for name in ("legacy", "bridge", "abacus")}
    deadline: float | None = None
    try:
        while True:
            for restart in components.supervise():
                view.phase(
                    f"restarted the {restart.component} ({restart.exit}: "
                    f"{restart.reason}), pid {restart.pid}"
                )
            _note_looping(inst, components, view, looping)
            done = not publisher.is_alive()
            if done and "error" in outcome:
                raise RunFailed(f"publishing failed: {outcome['error']}")
            # the warm-up probe went through every pipeline too
            published = 1 + (outcome["report"].published if done else stream.published)
            x = monitor.sample(inst, components.jobs, stream.published, ask_workers=done)
            for kind, status in components.job_states().items():
                if kind in x.jobs:  # a restarted job counts once its new process runs
                    x.jobs[kind]["status"] = status
            finish.update(x)
            view.update(x, stream, total, watcher)
            if done:
                if deadline is None:
                    deadline = time.monotonic() + config.drain_timeout_s
                    view.phase("waiting for every pipeline to drain")
                checks = {
                    "legacy": monitor.legacy_drained(x, published),
                    "bridge": monitor.bridge_drained(
                        x, published, restarted=components.restarted("bridge")
                    ),
                    "abacus": monitor.abacus_drained(x),
                }
                for name, ok in checks.items():
                    streak[name] = streak[name] + 1 if ok else 0
                if all(n >= CONFIRMATIONS for n in streak.values()):
                    break
                if time.monotonic() > deadline:
                    waiting = [n for n, k in streak.items() if k < CONFIRMATIONS]
                    raise RunFailed(
                        f"not drained after {config.drain_timeout_s:.0f} s: "
                        f"{', '.join(waiting)} (last sample: legacy "
                        f"{x.legacy}, bridge {x.bridge}, jobs {x.jobs})"
                    )
            time.sleep(0.5)
    except BaseException:
        stream.stop.set()
        publisher.join(timeout=120)
        raise
    report: PublishReport = outcome["report"]
    started = stream.started_at or time.time()
    inst.record(published=report.published, publish=report.summary())
    throughput: dict[str, Any] = {
        "publish": {"events": report.published, "events_per_s": round(report.rate, 1)}
    }
    for name in monitor.PIPELINES:
        elapsed = finish.last_change.get(name, started) - started
        throughput[name] = {
            "events": report.published,
            "elapsed_s": round(elapsed, 1),
            "events_per_s": round(report.published / elapsed, 1) if elapsed > 0 else None,
        }
    return report, throughput


def _note_looping(inst: Installation, components: Components, view: View, seen: set[str]) -> None:
    """A job restart-looping (`abacus.manager.problem`) is shown, not fatal: a recovery
    (a server restarted, a job restored) costs restarts too; a job that keeps failing ends
    FAILED (flink.restart_attempts) and the supervisor's budget ends the run."""
    from abacus import manager

    for name in components.jobs.values():
        state = manager.status(inst.settings, name)
        found = manager.problem(state) if state is not None else None
        if found and "restart-looping" in found and name not in seen:
            seen.add(name)
            view.phase(f"Abacus {found}: not stopping the run (a recovery restarts too)")


def audit_run(inst: Installation, html_dir: Path, view: View | None = None) -> list[DateAudit]:
    """One audit per local date of the run's event log: legacy vs shadow, truth = the log.
    Each also covers the month bucket of its (company, statistic) and (company, customer,
    statistic) units: compare plans a date's units from that date's index, so a unit's month
    counter is audited with each date the unit has events on (never missed, maybe twice)."""
    html_dir.mkdir(parents=True, exist_ok=True)
    options = compare_audit.RunOptions(work_dir=inst.run_dir / "audits")
    out = []
    for date in dates_touched(inst.events_path):
        if view is not None:
            view.phase(f"auditing {date}")
        result = compare_audit.run_audit(
            inst.settings,
            date,
            "legacy",
            "shadow",
            str(inst.events_path),
            include_month=True,
            options=options,
        )
        html = html_dir / f"{inst.run_id}-{date}.html"
        with html.open("w", encoding="utf-8") as out_file:
            render(result, "html", out_file)
        out.append(DateAudit(date, result, html))
    return out


def _latency_figures(watcher: ProbeWatcher | None) -> dict[str, Any]:
    if watcher is None or not watcher.published.keys() - watcher.warmup:
        return {}
    from dataclasses import asdict

    return {
        "legacy": asdict(watcher.latency("legacy")),
        "abacus": asdict(watcher.latency("shadow")),
        "error": watcher.error,
    }


def drift(a: DateAudit) -> dict[str, Any]:
    """Each side against the truth, from the audit's summary."""
    s = a.result.summary
    totals, supports = s.get("totals", {}), s.get("truth_supports") or {}
    truth = totals.get("truth_count") or 0
    over = under = 0  # legacy's counts above the truth (redeliveries, crashes) and below (lost)
    for record in a.result.mismatches():
        delta = (record["left_count"] or 0) - (record["truth_count"] or 0)
        over, under = over + max(delta, 0), under + max(-delta, 0)
    return {
        "date": a.date,
        "outcome": a.result.outcome,
        "audit_id": a.result.audit_id,
        "keys": s.get("keys_compared"),
        "defects": s.get("defects"),
        "legacy_minus_truth": (totals.get("left_count") or 0) - truth,
        "abacus_minus_truth": (totals.get("right_count") or 0) - truth,
        "legacy_over": over,
        "legacy_under": under,
        "legacy_wrong_keys": supports.get("right", 0) + supports.get("neither", 0),
        "abacus_wrong_keys": supports.get("left", 0) + supports.get("neither", 0),
        "attribution": s.get("attribution", {}),
        "html": str(a.html),
    }


def summary(result: RunResult) -> dict[str, Any]:
    """The run as plain data (`--format json`, and run.json)."""
    return {
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "events": str(result.events_path),
        "published": result.published,
        "probes": result.probes,
        "error": result.error,
        "exit_code": result.exit_code,
        "clean": result.clean,
        "audits": [drift(a) for a in result.audits],
        "figures": result.figures,
        "restarts": [r.to_dict() for r in result.restarts],
        "abacus_increments": {
            "reapplied": result.reapplied,
            "uncertain": result.uncertain,
            "jobs": {k: i.to_dict() for k, i in sorted(result.increments.items())},
        },
        "explanation": result.explanation,
    }
