"""`abacus bench serve`: the read API under a real HTTP load generator (wrk).

A store of its own (keyspace prefix `<prefix>bench_serve_<run>_`: legacy's tables, which
the stage `legacy` reads, and ops, whose missing stage row means `legacy`) is loaded with
`--keys` (company, statistic) pairs x one day's 24 hour counters and its day counter,
through storage's own writer. `abacus serve` then runs in a subprocess on a free port, and
wrk drives it (`--connections` open connections over `--threads` threads, `--duration-s`
each run, after a warm-up) with single-bucket queries: every request picks a random key
and hour (wrk's Lua `request()`), so the reads spread over every partition loaded.

Figures, measured in the same run:
- the query's requests/s, p50 and p99 latency (wrk's, a closed loop: each connection sends
  its next request when the last is answered), errors (socket errors and non-2xx answers),
  and whether the goal (>= 1,000 requests/s at p99 <= 50 ms) is met;
- baselines: `GET /health` through the same server (the HTTP stack alone), and the same
  queries straight through the Cassandra driver from this process (no HTTP, as many in
  flight as connections): the ratios say what HTTP and the API cost.
Everything it created is removed at the end (the server stopped, the keyspaces dropped).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import click
from cassandra.concurrent import execute_concurrent

from counting import TOTAL, AccountKey
from serve.app import ACCOUNT, HEALTH
from serve.queries import parse_query, requests_of
from settings import Settings
from settings.options import Failure, output_format, seed
from storage import CounterStore, Prepared, connect
from storage import resources as storage_resources

GOAL_RPS = 1000.0
GOAL_P99_MS = 50.0
STATISTIC = "opened"
DATE = "2025-12-01"
STORES = ["legacy", "ops"]

# wrk's Lua: a random (key, hour) per request; at the end one JSON line of the figures
_LUA = """
local keys, date, token, path = %(keys)d, "%(date)s", "%(token)s", "%(path)s"
local headers = {}
if token ~= "" then headers["Authorization"] = "Bearer " .. token end
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end
function init(args)
  math.randomseed(%(seed)d + (id or 0) * 7919)
end
function request()
  if path ~= "" then return wrk.format("GET", path, headers) end
  local b = string.format("%%sT%%02d", date, math.random(0, 23))
  return wrk.format("GET", string.format(
    "%(route)s?company=c%%06d&statistic=%(statistic)s&resolution=hour&from=%%s&to=%%s",
    math.random(0, keys - 1), b, b), headers)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"errors":{"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d},"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _company(i: int) -> str:
    return f"c{i:06d}"


def _isolated(settings: Settings, run: str) -> Settings:
    prefix = f"{settings.cassandra.keyspace_prefix}bench_serve_{run}_"
    return settings.model_copy(
        update={"cassandra": settings.cassandra.model_copy(update={"keyspace_prefix": prefix})}
    )


def load(settings: Settings, keys: int) -> dict[str, Any]:
    """`keys` (company, statistic) x (24 hour counters + the day's), total facet, written
    by storage's writer into the legacy store."""
    rng = random.Random(keys)
    rows = []
    for i in range(keys):
        hours = [rng.randint(1, 50) for _ in range(24)]
        for h, n in enumerate(hours):
            rows.append(
                (AccountKey(_company(i), STATISTIC, "hour", f"{DATE}T{h:02d}", *TOTAL), n, 1)
            )
        rows.append((AccountKey(_company(i), STATISTIC, "day", DATE, *TOTAL), sum(hours), 1))
    session = connect(settings.cassandra)
    try:
        store = CounterStore(Prepared(session), settings.cassandra, "legacy")
        started = time.perf_counter()
        store.write_account(rows)
        elapsed = time.perf_counter() - started
    finally:
        session.cluster.shutdown()
    return {"keys": keys, "counters": len(rows), "seconds": elapsed}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ABACUS_CASSANDRA__KEYSPACE_PREFIX": settings.cassandra.keyspace_prefix,
        "ABACUS_SERVE__EXPERIMENT_SHARE": "0",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_healthy(server: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise Failure(f"abacus serve exited {server.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(base + HEALTH, timeout=2) as r:  # noqa: S310 (http://127.0.0.1)
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise Failure(f"abacus serve did not answer {HEALTH} within 60 s: {_tail(log)}")


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])


def _wrk(
    base: str,
    script: Path,
    threads: int,
    connections: int,
    duration_s: float,
) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Failure("wrk is not installed: abacus services install (or apt-get install wrk)")
    done = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            base + "/",
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise Failure(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-300:]}")
    raw = json.loads(lines[-1])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "requests_per_s": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "error_kinds": raw["errors"],
    }


def _script(directory: Path, name: str, keys: int, token: str, path: str, seed_: int) -> Path:
    script = directory / f"{name}.lua"
    script.write_text(
        _LUA
        % {
            "keys": keys,
            "date": DATE,
            "token": token,
            "path": path,
            "seed": seed_,
            "route": ACCOUNT,
            "statistic": STATISTIC,
        }
    )
    return script


def driver_baseline(
    settings: Settings, keys: int, requests: int, concurrency: int, seed_: int
) -> dict[str, Any]:
    """The same single-bucket queries straight through the Cassandra driver (no HTTP)."""
    rng = random.Random(seed_)
    session = connect(settings.cassandra)
    try:
        store = CounterStore(Prepared(session), settings.cassandra, "legacy")
        statements = []
        for _ in range(requests):
            bucket = f"{DATE}T{rng.randint(0, 23):02d}"
            q = parse_query(_company(rng.randrange(keys)), STATISTIC, "hour", bucket, bucket)
            statements += requests_of(store, q)
        execute_concurrent(session, statements[: min(200, len(statements))], concurrency)
        started = time.perf_counter()
        results = execute_concurrent(session, statements, concurrency, raise_on_first_error=False)
        seconds = time.perf_counter() - started
    finally:
        session.cluster.shutdown()
    failed = sum(1 for ok, _ in results if not ok)
    return {
        "requests": len(statements),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(statements) / seconds, 1) if seconds else 0.0,
        "errors": failed,
    }


def _served(base: str, token: str) -> dict[str, float]:
    """The server's own count of the query route's answers by status (its /metrics)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(base + "/metrics", headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 (http://127.0.0.1)
        text = r.read().decode()
    out: dict[str, float] = {}
    prefix = f'abacus_serve_requests_total{{route="{ACCOUNT}",status="'
    for line in text.splitlines():
        if line.startswith(prefix):
            status, _, value = line[len(prefix) :].partition('"} ')
            out[status] = float(value)
    return out


def run_bench(
    settings: Settings,
    keys: int,
    duration_s: float,
    warmup_s: float,
    threads: int,
    connections: int,
    seed_: int,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    isolated = _isolated(settings, run)
    token = settings.serve.token.get_secret_value() if settings.serve.token else ""
    storage_resources.provision(isolated, STORES)
    server: subprocess.Popen[bytes] | None = None
    try:
        loaded = load(isolated, keys)
        with tempfile.TemporaryDirectory(prefix="abacus-bench-serve-") as tmp:
            directory = Path(tmp)
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            log = directory / "serve.log"
            server = _serve(isolated, port, log)
            _wait_healthy(server, base, log)
            query = _script(directory, "query", keys, token, "", seed_)
            health = _script(directory, "health", keys, token, HEALTH, seed_)
            if warmup_s > 0:
                _wrk(base, query, threads, connections, warmup_s)
            measured = _wrk(base, query, threads, connections, duration_s)
            baseline = _wrk(base, health, threads, connections, duration_s)
            served = _served(base, token)
        driver = driver_baseline(
            isolated, keys, max(200, int(measured["requests_per_s"] * 2)), connections, seed_
        )
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        storage_resources.teardown(isolated, STORES)
    met = measured["requests_per_s"] >= GOAL_RPS and measured["p99_ms"] <= GOAL_P99_MS
    return {
        "parameters": {
            "keys": keys,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "threads": threads,
            "connections": connections,
            "seed": seed_,
            "load_generator": "wrk",
        },
        "loaded": loaded,
        "query": measured,
        "served_by_status": served,
        "health_baseline": baseline,
        "driver_baseline": driver,
        "ratios": {
            "query_vs_health": _ratio(measured, baseline),
            "query_vs_driver": _ratio(measured, driver),
        },
        "goal": {"requests_per_s": GOAL_RPS, "p99_ms": GOAL_P99_MS, "met": met},
    }


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    return round(a["requests_per_s"] / b["requests_per_s"], 3) if b["requests_per_s"] else None


def render(result: dict[str, Any]) -> str:
    p, loaded = result["parameters"], result["loaded"]
    rate = loaded["counters"] / loaded["seconds"] if loaded["seconds"] else 0.0
    lines = [
        f"abacus bench serve: {loaded['keys']:,} keys x 25 counters loaded in "
        f"{loaded['seconds']:.1f} s ({rate:,.0f} counters/s); wrk {p['threads']} threads, "
        f"{p['connections']} connections, {p['duration_s']:g} s per run "
        f"(after {p['warmup_s']:g} s warm-up)",
        f"{'':<34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for name, key in (
        ("single-bucket query (HTTP)", "query"),
        ("/health (HTTP baseline)", "health_baseline"),
    ):
        r = result[key]
        lines.append(
            f"{name:<34}{r['requests_per_s']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['errors']:>8}"
        )
    d = result["driver_baseline"]
    lines.append(
        f"{'same query, driver direct (no HTTP)':<34}{d['requests_per_s']:>10,.0f}"
        f"{'-':>9}{'-':>9}{d['errors']:>8}"
    )
    ratios, goal = result["ratios"], result["goal"]
    lines.append(
        f"ratios: query/health {ratios['query_vs_health']}, "
        f"query/driver {ratios['query_vs_driver']}"
    )
    lines.append(f"served (the server's count by status): {result['served_by_status']}")
    lines.append(
        f"goal >= {goal['requests_per_s']:,.0f} req/s at p99 <= {goal['p99_ms']:g} ms: "
        + ("met" if goal["met"] else "NOT met")
    )
    return "\n".join(lines)


@click.command("serve")
@click.option(
    "--keys",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="(company, statistic) pairs loaded, each with 25 counters.",
)
@click.option(
    "--duration-s",
    type=click.FloatRange(1, 600),
    default=10.0,
    show_default=True,
    help="Each wrk run (the query, then /health).",
)
@click.option("--warmup-s", type=click.FloatRange(0, 600), default=3.0, show_default=True)
@click.option(
    "--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="wrk threads."
)
@click.option(
    "--connections",
    type=click.IntRange(1, 10_000),
    default=8,
    show_default=True,
    help="wrk connections kept open (each waits for its answer: more connections queue "
    "in the server once it is saturated, raising p99, not req/s).",
)
@seed(1, help="The keys' counts and the queries' order.")
@output_format("table", "json")
@click.pass_obj
def bench_serve(
    settings: Settings,
    keys: int,
    duration_s: float,
    warmup_s: float,
    threads: int,
    connections: int,
    seed: int,
    fmt: str,
) -> None:
    """The read API's requests/s and p50/p99 under wrk, single-bucket queries, with baselines."""
    if connections < threads:
        raise click.UsageError("--connections must be at least --threads")
    result = run_bench(settings, keys, duration_s, warmup_s, threads, connections, seed)
    click.echo(json.dumps(result, indent=2) if fmt == "json" else render(result))
