"""`abacus bench compare`: counter rows compared per second, with the truth off and on.

The dataset: generated events of one UTC day, recounted; the date's counters written into
the legacy store (as they are) and the shadow store (0.1% of them changed) of keyspaces
named after the parameters, both stores loaded at once, so a rerun with the same
parameters reuses them (the events file and a marker, written once a load completed, live
in `<services.data_dir>/bench/`). Each setting is audited `--repeat` times; the machine is
shared, so the best, the spread and the load average are printed. Target (issue 6): at
least 50,000 rows/s per side on a date with 1M counter rows per side:
`abacus bench compare --rows 1000000`.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any

import click

from services.paths import data_dir
from settings import Settings
from settings.options import seed

DAY = "2025-11-03"
_SLICE = 100_000  # rows per write call of the loader


def _bench_settings(settings: Settings, rows: int, seed: int) -> Settings:
    prefix = f"bench_cmp_{rows}_{seed}_"
    cass = settings.cassandra.model_copy(
        update={"keyspace_prefix": prefix, "write_concurrency": 256}
    )
    return settings.model_copy(update={"cassandra": cass})


def _config(n: int, seed: int) -> Any:
    from counting.generate import GeneratorConfig

    start = 1_762_128_000  # 2025-11-03T00:00:00Z
    return GeneratorConfig(
        n=n,
        seed=seed,
        companies=300,
        customers=300_000,
        statistics=6,
        facets=8,
        timezones=("UTC",),
        duplicate_share=0.0,
        start_ts=start,
        span_s=86_400 - 2,
    )


def _recount(n: int, seed: int) -> tuple[Any, int]:
    from counting import AccountCount, CustomerCount, Recount
    from counting.generate import generate
    from counting.recount import paused_gc

    recount = Recount()
    with paused_gc():
        for event in generate(_config(n, seed)):
            recount.add_raw(event)
    rows: list[Any] = [
        c
        for c in chain[AccountCount | CustomerCount](recount.account(), recount.customer())
        if c.key.resolution != "month"
    ]
    return rows, n


def _dataset(rows_target: int, seed: int) -> tuple[list[Any], int]:
    """The date's counters (at least rows_target of them) and the number of events."""
    sample = 20_000
    rows, _ = _recount(sample, seed)
    n = int(sample * rows_target / max(1, len(rows)) * 1.15) + 1
    while True:
        rows, _ = _recount(n, seed)
        if len(rows) >= rows_target:
            return rows, n
        n = int(n * rows_target / max(1, len(rows)) * 1.1) + 1


def _load(settings: Settings, rows: list[Any], seed: int) -> float:
    from storage import CounterStore, Prepared, connect, keyspace_of, statements

    session = connect(settings.cassandra)
    try:
        for cql in statements(settings.cassandra):
            session.execute(cql, timeout=120)
        prepared = Prepared(session)
        for name in ("legacy", "shadow"):  # counters add up: an interrupted load starts over
            ks = keyspace_of(settings.cassandra, name)
            for table in (
                "account_counts",
                "customer_counts",
                "account_keys_by_date",
                "customer_keys_by_date",
            ):
                session.execute(prepared(f"TRUNCATE {ks}.{table}"), timeout=120)
        rng = random.Random(seed)
        right = [c._replace(count=c.count + 1) if rng.random() < 0.001 else c for c in rows]
        t0 = time.perf_counter()
        # Both stores at once: while one thread builds its batches, the other's are in
        # flight. Large slices keep the store's request window full (it drains at the end
        # of each write call).
        with ThreadPoolExecutor(max_workers=2) as pool:
            for done in [
                pool.submit(_write, CounterStore(prepared, settings.cassandra, name), side)
                for name, side in (("legacy", rows), ("shadow", right))
            ]:
                done.result()
        return time.perf_counter() - t0
    finally:
        session.cluster.shutdown()


def _write(store: Any, side: list[Any]) -> None:
    accounts = [(c.key, c.count, c.uniques) for c in side if hasattr(c, "uniques")]
    customers = [(c.key, c.count) for c in side if not hasattr(c, "uniques")]
    for i in range(0, len(accounts), _SLICE):
        store.write_account(accounts[i : i + _SLICE])
    for i in range(0, len(customers), _SLICE):
        store.write_customer(customers[i : i + _SLICE])


@click.command("compare")
@click.option(
    "--rows",
    type=click.IntRange(min=1000),
    default=100_000,
    show_default=True,
    help="Counter rows per side on the date (the issue's target: 1000000).",
)
@seed(0)
@click.option("--concurrency", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--chunk-units", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--reload", is_flag=True, help="Load the dataset again even if present.")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Audits per setting (the machine is shared: best and spread are printed).",
)
@click.pass_obj
def bench_compare(
    settings: Settings,
    rows: int,
    seed: int,
    concurrency: int,
    chunk_units: int,
    reload: bool,
    repeat: int,
) -> None:
    """Counter rows compared per second by `abacus compare`, truth off and on."""
    from compare.audit import RunOptions, run_audit
    from compare.plan import LEVELS

    bench = _bench_settings(settings, rows, seed)
    home = data_dir(settings) / "bench"
    home.mkdir(parents=True, exist_ok=True)
    marker = home / f"compare-{rows}-{seed}.json"  # written only once a load completed
    events_path = home / f"compare-{rows}-{seed}.events.jsonl"
    info = json.loads(marker.read_text()) if marker.is_file() and not reload else None
    if info is None or not events_path.is_file():
        marker.unlink(missing_ok=True)  # until this load completes, the dataset is not one
        t0 = time.perf_counter()
        counted, n = _dataset(rows, seed)
        from counting.generate import generate

        with events_path.open("w", encoding="utf-8") as out:
            for event in generate(_config(n, seed)):
                out.write(json.dumps(event) + "\n")
        prepared_s = time.perf_counter() - t0
        click.echo(
            f"dataset: {n} events -> {len(counted)} counter rows per side on {DAY} "
            f"({prepared_s:.1f}s to generate and recount)"
        )
        load_s = _load(bench, counted, seed)
        info = {"events": n, "rows": len(counted), "load_s": round(load_s, 1)}
        click.echo(
            f"loaded 2 x {len(counted)} rows in {load_s:.1f}s "
            f"({2 * len(counted) / load_s:,.0f} rows/s; load average "
            f"{_load_average()})"
        )
        marker.write_text(json.dumps(info))
    else:
        click.echo(
            f"reusing the dataset of {marker} ({info['rows']} rows per side, "
            f"{info['events']} events; keyspace prefix "
            f"{bench.cassandra.keyspace_prefix})"
        )
    click.echo(
        f"parameters: {info['rows']:,} counter rows per side on {DAY} (legacy against "
        f"shadow, 0.1% of shadow's changed), truth: {info['events']:,} events; levels "
        f"{', '.join(LEVELS)}; concurrency {concurrency}, chunk {chunk_units} units, "
        f"settle 0s, no rate limit; {repeat} audit(s) per setting; "
        f"{os.cpu_count()} cores shared with the servers"
    )
    options = RunOptions(
        concurrency=concurrency,
        max_rps=0,
        chunk_units=chunk_units,
        settle_s=0,
        work_dir=home / "audits",
    )
    best = {}
    for label, truth in (("truth off", "none"), ("truth on", str(events_path))):
        rates = []
        for _ in range(repeat):
            before = _load_average()
            t0 = time.perf_counter()
            result = run_audit(bench, DAY, "legacy", "shadow", truth, options=options)
            elapsed = time.perf_counter() - t0
            s = result.summary
            rates.append(s["keys_compared"] / elapsed)
            click.echo(
                f"{label:9}: {s['keys_compared']:,} keys compared ({s['units']:,} "
                f"units, {s['queries']:,} queries) in {elapsed:.1f}s = "
                f"{rates[-1]:,.0f} rows/s per side; {s['mismatched']:,} mismatches "
                f"(outcome {result.outcome}); load average {before} -> "
                f"{_load_average()}"
            )
        best[label] = max(rates)
        spread = (
            f", spread {min(rates):,.0f}..{max(rates):,.0f}, median {statistics.median(rates):,.0f}"
            if len(rates) > 1
            else ""
        )
        click.echo(f"{label:9}: best {best[label]:,.0f} rows/s per side{spread}")
    click.echo(
        f"target >= 50,000 rows/s per side: truth off "
        f"{'met' if best['truth off'] >= 50_000 else 'NOT met'}, truth on "
        f"{'met' if best['truth on'] >= 50_000 else 'NOT met'}; "
        f"truth on / off = {best['truth on'] / best['truth off']:.2f}"
    )


def _load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
