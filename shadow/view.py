"""Rendering a shadow run: the live view while it runs, the audits and figures at the end."""

from __future__ import annotations

import logging
import time
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from compare.report import headline, render
from settings.output import term, visible
from shadow import monitor
from shadow.probes import ProbeWatcher
from shadow.run import RunResult, View, drift
from shadow.stream import Stream


class _Rates:
    """events/s of each counter between two samples."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, name: str, at: float, value: int) -> str:
        prev = self._last.get(name)
        self._last[name] = (at, value)
        if prev is None or at <= prev[0]:
            return "-"
        return f"{(value - prev[1]) / (at - prev[0]):,.0f}/s"


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def stage_table(
    x: monitor.Sample,
    stream: Stream,
    total: int | None,
    watcher: ProbeWatcher | None,
    rates: _Rates,
) -> Table:
    table = Table("stage", "done", "rate", "backlog", "dead letters", title=None)
    pub = f"{stream.published:,}" + (f" / {total:,}" if total else "")
    table.add_row("publish (RabbitMQ)", pub, rates("publish", x.at, stream.published), "", "")
    lg = x.legacy
    if lg:
        stats = lg.get("stats", {})
        table.add_row(
            "legacy worker",
            f"{x.legacy_done:,} tasks",
            rates("legacy", x.at, x.legacy_done),
            f"queue {_n(lg.get('ready'))}, unacked {_n(lg.get('unacked'))}",
            f"{_n(lg.get('dead_letters'))} (queue)",
        )
        table.add_row(
            "Big Bertha flusher",
            f"{stats.get('flushed_keys', 0):,} keys",
            rates("flushed", x.at, stats.get("flushed_keys", 0)),
            f"{_n(lg.get('pending_fields'))} pending, {_n(lg.get('batches'))} batches",
            ", ".join(
                f"{stats[k]} {what} (chaos)"
                for k, what in (
                    ("chaos_dropped_flushes", "dropped"),
                    ("chaos_killed_flushes", "killed"),
                )
                if stats.get(k)
            ),
        )
    b = x.bridge
    table.add_row(
        "bridge -> Kafka",
        f"{b.get('produced', 0):,}",
        rates("bridge", x.at, b.get("produced", 0)),
        f"queue {_n(b.get('ready'))}, in flight {_n(b.get('in_flight'))}",
        _n(b.get("dead_lettered", 0)),
    )
    for kind, j in sorted(x.jobs.items()):
        table.add_row(
            term(f"Abacus {kind} ({j['status'].lower()})"),
            f"{_n(j['written'])} increments",
            rates(kind, x.at, j["written"] or 0),
            f"lag {_n(j['lag'])}, window {_n((j['fanned'] or 0) - (j['written'] or 0))}",
            "",
        )
    table.add_row("Kafka DLQ topic", "", "", "", _n(x.dlq_records))
    if watcher is not None:
        lat = [f"{store} {watcher.latency(store).seen}" for store in ("legacy", "shadow")]
        table.add_row(
            "latency probes",
            f"{len(watcher.published) - len(watcher.warmup)} published",
            "",
            "seen: " + ", ".join(lat),
            "",
        )
    return table


class LiveView(View):
    """A rich Live table on stderr, refreshed at each sample."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._phase = "starting"
        self._rates = _Rates()
        self._started = time.monotonic()
        self._live = Live(Text(self._phase), console=console, refresh_per_second=4, transient=False)
        self._table: Table | None = None

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def _render(self) -> None:
        elapsed = time.monotonic() - self._started
        head = Text(f"[{elapsed:5.0f} s] {visible(self._phase)}", style="bold")
        self._live.update(Group(head, self._table) if self._table is not None else head)

    def phase(self, text: str) -> None:
        self._phase = text
        self._render()

    def update(
        self,
        sample: monitor.Sample,
        stream: Stream,
        total: int | None,
        watcher: ProbeWatcher | None,
    ) -> None:
        self._table = stage_table(sample, stream, total, watcher, self._rates)
        self._render()


class LogView(View):
    """Without a terminal (CI, pipes): the phases, and a progress line every `every_s`."""

    def __init__(self, console: Console, every_s: float = 10.0) -> None:
        self._console, self._every_s = console, every_s
        self._last = 0.0
        self._started = time.monotonic()

    def phase(self, text: str) -> None:
        self._console.print(term(f"shadow [{time.monotonic() - self._started:4.0f} s]: {text}"))

    def update(
        self,
        sample: monitor.Sample,
        stream: Stream,
        total: int | None,
        watcher: ProbeWatcher | None,
    ) -> None:
        if sample.at - self._last < self._every_s:
            return
        self._last = sample.at
        lags = ", ".join(f"{k} lag {j['lag']}" for k, j in sorted(sample.jobs.items()))
        self._console.print(
            term(
                f"shadow [{time.monotonic() - self._started:4.0f} s]: published "
                f"{stream.published}, legacy done {sample.legacy_done} "
                f"(queue {sample.legacy.get('ready')}), bridge produced "
                f"{sample.bridge.get('produced', 0)}, {lags}"
            )
        )


class EventLogView(View):
    """`--log-format json` without a terminal: LogView's lines as log events (logger
    `abacus.shadow`, INFO), the progress figures as fields."""

    def __init__(self, every_s: float = 10.0) -> None:
        self._log = logging.getLogger("abacus.shadow")
        self._log.setLevel(logging.INFO)
        self._every_s, self._last = every_s, 0.0
        self._started = time.monotonic()

    def phase(self, text: str) -> None:
        self._log.info(visible(text), extra={"elapsed_s": self._elapsed()})

    def update(
        self,
        sample: monitor.Sample,
        stream: Stream,
        total: int | None,
        watcher: ProbeWatcher | None,
    ) -> None:
        if sample.at - self._last < self._every_s:
            return
        self._last = sample.at
        figures = {
            "elapsed_s": self._elapsed(),
            "published": stream.published,
            "legacy_done": sample.legacy_done,
            "legacy_queue": sample.legacy.get("ready"),
            "bridge_produced": sample.bridge.get("produced", 0),
            "job_lags": {k: j["lag"] for k, j in sorted(sample.jobs.items())},
        }
        self._log.info("progress", extra=figures)

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._started, 1)


def print_result(result: RunResult, out: IO[str]) -> None:
    """The audits (detail for the dirty ones), a summary per date, the figures side by side
    and where the HTML reports are."""
    console = Console(file=out, width=max(110, Console().width))
    for a in result.audits:
        if a.result.outcome == "clean":
            console.print(term(headline(a.result)))
        else:
            render(a.result, "table", out, limit=10)
    if result.audits:
        table = Table(
            "date (hour, day, month)",
            "keys",
            "legacy - truth (over / under)",
            "Abacus - truth",
            "legacy wrong keys",
            "Abacus wrong keys",
            "outcome",
            "drift concentrated in",
            title=f"shadow run {result.run_id}: legacy vs Abacus vs truth "
            f"({result.published:,} events)",
        )
        for a in result.audits:
            d = drift(a)
            top = d["attribution"].get("companies") or []
            where = ", ".join(f"{r['label']} ({r['mismatches']})" for r in top[:3])
            table.add_row(
                term(d["date"]),
                _n(d["keys"]),
                f"{d['legacy_minus_truth']:+,} (+{d['legacy_over']:,} / -{d['legacy_under']:,})",
                f"{d['abacus_minus_truth']:+,}",
                _n(d["legacy_wrong_keys"]),
                _n(d["abacus_wrong_keys"]),
                term(d["outcome"].upper()),
                term(where or "-"),
            )
        console.print(table)
    figures_table(result, console)
    restarts_table(result, console)
    for a in result.audits:
        console.print(term(f"report: {a.html}"))
    if result.explanation:
        console.print(term(result.explanation, style="yellow"))
    if result.error:
        console.print(term(f"run failed: {result.error}", style="red"))
    verdict = {
        0: "CLEAN: legacy = Abacus = truth",
        1: "NOT CLEAN: see the audits above",
        2: "ERROR",
    }[result.exit_code]
    console.print(term(verdict, style="bold") + term(f" (run {result.run_id}, {result.run_dir})"))


def figures_table(result: RunResult, console: Console) -> None:
    throughput = result.figures.get("throughput") or {}
    latency = result.figures.get("latency") or {}
    if not throughput:
        return
    table = Table(
        "pipeline",
        "events",
        "sustained events/s",
        "publish -> visible p50",
        "p99",
        "max",
        "probes seen",
        title="throughput and latency, this run",
    )
    pub = throughput.get("publish", {})
    table.add_row("publish", _n(pub.get("events")), _n(pub.get("events_per_s")), "", "", "", "")
    for name in monitor.PIPELINES:
        t, lat = throughput.get(name, {}), latency.get(name) or {}
        table.add_row(
            name,
            _n(t.get("events")),
            _n(t.get("events_per_s")),
            _ms(lat.get("p50_ms")),
            _ms(lat.get("p99_ms")),
            _ms(lat.get("max_ms")),
            f"{lat.get('seen', 0)}/{lat.get('probes', 0)}" if lat else "-",
        )
    console.print(table)
    console.print(
        "sustained = events published / (first publish -> that pipeline's last "
        "count written); latency = probe published -> its account count readable "
        "in Cassandra"
    )


def restarts_table(result: RunResult, console: Console) -> None:
    """The components the run's supervisor started again, and what the jobs' restores cost."""
    if result.restarts:
        table = Table(
            "component",
            "at",
            "exit",
            "reason",
            "new pid",
            title=f"components restarted by the run ({len(result.restarts)})",
        )
        for r in result.restarts:
            table.add_row(
                term(r.component),
                time.strftime("%H:%M:%S", time.localtime(r.at)),
                term(r.exit),
                term(r.reason[:160]),
                _n(r.pid),
            )
        console.print(table)
    jobs = {
        k: i for k, i in result.increments.items() if i.processes > 1 or i.reapplied or i.uncertain
    }
    for kind, i in sorted(jobs.items()):
        console.print(
            term(
                f"Abacus {kind}: {i.processes} process(es), {i.reapplied} count "
                f"increments re-applied ({i.reapplied_across} across process "
                f"restarts), {i.uncertain} of unknown fate"
            )
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"
