"""`abacus bench recount`: events/s of the reference recount on a generated file."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from counting.generate import GeneratorConfig, generate
from counting.recount import Recount, paused_gc


def naive_recount(lines: list[bytes]) -> int:
    """The baseline: the straightforward implementation (every key at every resolution,
    no bucket cache), on the same lines, so the ratio is measured in the same run."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from counting.events import parse_event
    from counting.model import Rejection

    counts: dict[tuple[str, ...], list[object]] = {}
    seen: set[str] = set()
    for line in lines:
        event = parse_event(line)
        if isinstance(event, Rejection) or event.event_id in seen:
            continue
        seen.add(event.event_id)
        local = datetime.fromtimestamp(int(event.timestamp), ZoneInfo(event.timezone))
        labels = (
            local.strftime("%Y-%m-%dT%H"),
            local.strftime("%Y-%m-%d"),
            local.strftime("%Y-%m"),
        )
        for res, bucket in zip(("hour", "day", "month"), labels, strict=True):
            for facet, value in (("", ""), *event.facets):
                key = (event.company_id, event.statistic_id, res, bucket, facet, value)
                entry = counts.setdefault(key, [0, set()])
                entry[0] += 1  # type: ignore[operator]
                entry[1].add(event.customer_id)  # type: ignore[attr-defined]
    return len(counts)


@click.command("recount")
@click.option("--n", "n", type=click.IntRange(min=1000), default=1_000_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--baseline-n",
    type=click.IntRange(min=1000),
    default=100_000,
    show_default=True,
    help="Events the naive baseline runs on (it is slow).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def recount(n: int, seed: int, baseline_n: int, fmt: str) -> None:
    """Events/s of `abacus recount` on N generated events (4 facets, 3 time zones), per CPU
    second of its one core (wall-clock rate too), beside a naive implementation measured
    in the same run."""
    config = GeneratorConfig(n=n, seed=seed, facets=4, duplicate_share=0.01, late_share=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for event in generate(config):
                out.write(json.dumps(event) + "\n")
        size_mb = path.stat().st_size / 1e6
        result = Recount()
        wall0, start = time.perf_counter(), time.process_time()
        with paused_gc(), path.open("rb") as stream:
            for line in stream:
                result.add_raw(line)
            counted = time.process_time()
            keys = sum(1 for _ in result.account()) + sum(1 for _ in result.customer())
        done, wall = time.process_time(), time.perf_counter() - wall0
        with path.open("rb") as stream:
            sample = [line for _, line in zip(range(baseline_n), stream, strict=False)]
    t0 = time.process_time()
    naive_recount(sample)  # with the collector on, as a straightforward program runs
    naive_s = time.process_time() - t0
    figures = {
        "events": n,
        "file_mb": round(size_mb, 1),
        "counter_keys": keys,
        "count_s": round(counted - start, 2),
        "rollup_s": round(done - counted, 2),
        "events_per_s": round(n / (done - start)),
        "wall_events_per_s": round(n / wall),
        "naive_events": len(sample),
        "naive_events_per_s": round(len(sample) / naive_s),
    }
    figures["ratio_vs_naive"] = round(figures["events_per_s"] / figures["naive_events_per_s"], 2)
    if fmt == "json":
        click.echo(json.dumps(figures))
        return
    click.echo(
        f"recount: {n:,} events ({size_mb:.0f} MB, seed {seed}, 4 facets, 3 zones, "
        f"1% duplicates, 2% late), {keys:,} counter keys"
    )
    click.echo(
        f"  abacus recount  {figures['events_per_s']:>9,} events/CPU-s "
        f"(count {figures['count_s']} s + roll-up {figures['rollup_s']} s CPU; "
        f"{figures['wall_events_per_s']:,} events/s wall-clock)"
    )
    click.echo(
        f"  naive baseline  {figures['naive_events_per_s']:>9,} events/CPU-s "
        f"(on the first {len(sample):,} events)"
    )
    click.echo(f"  ratio           {figures['ratio_vs_naive']:>9}x")
