"""`abacus shadow run` end to end: the real servers, legacy worker and flusher, the bridge,
both Abacus jobs on Flink MiniClusters, and the three-way audit, run through the CLI.

Two scenarios over the fixed tricky corpus (DST folds and gaps, odd zones, every kind of
facet, every rejection reason), each event_id published once (its first delivery; legacy
does not de-duplicate) with the invalid lines:
- clean, with the poison corpus too (lone surrogates, invalid UTF-8, NULs, bidi controls,
  markup, formulas, huge ids and numbers, deep nesting): legacy = Abacus = truth on every
  date touched, exit 0, and every invalid line in each pipeline's dead letters with its
  reason;
- chaos (legacy requeues a deterministic share of tasks after counting them): legacy
  over-counts exactly the keys of the redelivered events, by exactly their redeliveries,
  Abacus equals the truth, exit 1, and the audits attribute the drift to those keys.

A real Prometheus (scraping every 2 s) and a read API run beside them: every part's metric
families are found in Prometheus afterwards, and the chaos run's dirty dates as audit
outcomes with their alert firing.

Both runs start together (each has its own run id: keyspaces, topics, queues, Redis prefix,
jobs), so the slow part, starting four Flink jobs, overlaps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from counting import Event, Recount, Rejection, parse_event, to_record
from counting.corpus import poison_lines, tricky_lines
from counting.events import MAX_INPUT_BYTES
from legacy import deadletter
from legacy.chaos import Chaos
from settings import Settings
from tests.e2e import operating
from tests.e2e.operating import Prometheus, ReadApi
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

REDELIVER = 0.3
TIMEOUT_S = 900
# the poison corpus, as lines of an event file can carry it (one line each, not blank)
POISON = [raw for _, raw in poison_lines() if raw.strip() and b"\n" not in raw]


def first_deliveries(lines: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        parsed = parse_event(line)
        if isinstance(parsed, Event):
            if parsed.event_id in seen:
                continue
            seen.add(parsed.event_id)
        out.append(line)
    return out


@dataclass
class Outcome:
    code: int
    doc: dict[str, Any]
    stderr: str

    @property
    def run_dir(self) -> Path:
        return Path(self.doc["run_dir"])

    def mismatches(self) -> list[dict[str, Any]]:
        out = []
        for audit in self.doc["audits"]:
            detail = self.run_dir / "audits" / audit["audit_id"] / "detail.jsonl"
            out += [json.loads(line) for line in detail.read_text().splitlines()]
        return out


def start(config: Path, events: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABACUS_")}
    env["ABACUS_CONFIG"] = str(config)
    abacus = Path(sys.executable).parent / "abacus"
    return subprocess.Popen(
        [
            str(abacus),
            "shadow",
            "run",
            "--events",
            str(events),
            "--rate",
            "20",
            "--probes-per-s",
            "1",
            "--keep",
            "2",
            "--no-services",
            "--no-live",
            "--format",
            "json",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> Outcome:
    out, err = process.communicate(timeout=TIMEOUT_S)
    assert out.strip(), f"no result (exit {process.returncode}):\n{err[-3000:]}"
    return Outcome(process.returncode, json.loads(out), err)


@pytest.fixture(scope="module")
def prom(services_up: object, settings: Settings) -> Iterator[Prometheus]:
    yield from operating.prometheus(settings)


@pytest.fixture(scope="module")
def ops_api(
    prom: Prometheus, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReadApi]:
    """A read API running through the runs (the jobs' consumer lag, legacy's queue and the
    stage, for Prometheus to scrape), over an ops keyspace of its own."""
    api = ReadApi(settings, "e2e_ops_", tmp_path_factory.mktemp("ops") / "serve.log")
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def runs(
    services_up: object, ops_api: ReadApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    tmp = tmp_path_factory.mktemp("shadow")
    config = tmp / "abacus.toml"
    # own base names (runs of other bases are never pruned by these); checkpoints every 2 s
    # so the jobs commit their offsets (the drain signal) sooner
    config.write_text(
        '[cassandra]\nkeyspace_prefix = "e2e_"\n[flink]\ncheckpoint_interval_ms = 2000\n'
    )
    events = tmp / "corpus.jsonl"
    events.write_text("\n".join(first_deliveries(tricky_lines())) + "\n", encoding="utf-8")
    poisoned = tmp / "poisoned.jsonl"
    poisoned.write_bytes(events.read_bytes() + b"\n".join(POISON) + b"\n")
    processes = {
        "clean": start(config, poisoned),
        "chaos": start(config, events, "--chaos-redeliver", str(REDELIVER)),
    }
    try:
        yield {name: finish(p) for name, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.terminate()
                p.wait(120)


def test_clean_run_legacy_equals_abacus_equals_truth(runs: dict[str, Outcome]) -> None:
    run = runs["clean"]
    assert run.code == 0, run.stderr[-3000:]
    doc = run.doc
    assert doc["error"] is None and doc["clean"]
    assert len(doc["audits"]) >= 10  # the corpus spans many local dates
    for audit in doc["audits"]:
        assert audit["outcome"] == "clean", audit
        assert audit["keys"] > 0
        assert audit["legacy_minus_truth"] == audit["abacus_minus_truth"] == 0
    assert run.mismatches() == []
    figures = doc["figures"]
    for pipeline in ("legacy", "abacus"):
        assert figures["throughput"][pipeline]["events_per_s"] > 0
        assert figures["latency"][pipeline]["seen"] > 0


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    fields = (
        ["company_id", "customer_id", "statistic_id", "resolution", "bucket"]
        if record["level"] == "customer"
        else ["company_id", "statistic_id", "resolution", "bucket", "facet", "value"]
    )
    return (record["level"], *(record[f] for f in fields))


def test_chaos_legacy_drifts_by_the_redeliveries_abacus_stays_exact(
    runs: dict[str, Outcome],
) -> None:
    run = runs["chaos"]
    assert run.code == 1, run.stderr[-3000:]
    assert run.doc["error"] is None and not run.doc["clean"]
    # what legacy was made to count twice: every valid event of the run's log hit by chaos
    chaos = Chaos(redeliver=REDELIVER)
    log = (run.run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    redelivered = [
        line
        for line in log
        if isinstance(e := parse_event(line), Event) and chaos.redelivers(e.event_id)
    ]
    assert len(redelivered) >= 5
    extra = Recount(dedup=False)
    for line in redelivered:
        extra.add_raw(line)
    expected = {_key({"level": "account", **to_record(c)}): c.count for c in extra.account()}
    expected |= {_key({"level": "customer", **to_record(c)}): c.count for c in extra.customer()}

    found = {}
    for record in run.mismatches():
        # Abacus equals the truth; legacy is over by exactly the redeliveries of the key
        assert record["truth_supports"] == "right", record
        assert record["right_count"] == record["truth_count"], record
        if record["level"] == "account":
            assert record["left_uniques"] == record["truth_uniques"], record  # Check Uniques
        found[_key(record)] = record["left_count"] - record["truth_count"]
    assert found == expected

    affected = {json.loads(line)["company_id"] for line in redelivered}
    named: set[str] = set()
    for audit in run.doc["audits"]:
        assert audit["abacus_minus_truth"] == 0
        assert audit["abacus_wrong_keys"] == 0
        assert audit["legacy_minus_truth"] >= 0
        named |= {row["label"] for row in audit["attribution"].get("companies", [])}
    assert named == affected
    assert sum(a["legacy_minus_truth"] for a in run.doc["audits"]) > 0


def _reasons(lines: list[bytes]) -> Counter[str]:
    return Counter(
        p.reason.value for line in lines if isinstance(p := parse_event(line), Rejection)
    )


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _dlq_records(settings: Settings, topic: str) -> list[Any]:
    """Every record of a finished run's DLQ topic (all partitions, to their end offsets)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"e2e-{topic}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        read = dict.fromkeys(partitions, 0)
        out: list[Any] = []
        deadline = time.monotonic() + 120
        while any(read[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"{topic}: read {read} of {ends}"
            for m in consumer.consume(500, timeout=1.0):
                if m.error() is None:
                    out.append(m)
                    read[m.partition()] = m.offset() + 1
        return out
    finally:
        consumer.close()


def test_poison_is_dead_lettered_by_every_pipeline_with_its_reason(
    runs: dict[str, Outcome], settings: Settings
) -> None:
    run = runs["clean"]
    assert run.code == 0, run.stderr[-3000:]
    names = json.loads((run.run_dir / "run.json").read_text())["overrides"]
    log = (run.run_dir / "events.jsonl").read_bytes().split(b"\n")
    invalid = [line for line in log if line.strip() and isinstance(parse_event(line), Rejection)]
    assert _reasons(POISON) <= _reasons(invalid)  # the poison was published

    # legacy: every invalid line is a dead letter with the contract's reason (lines that
    # are not UTF-8 cannot be a Celery task's text: the producer dead-letters them)
    rabbit = settings.rabbitmq.model_copy(update=names["rabbitmq"])
    letters = deadletter.read(rabbit, limit=10_000)
    assert Counter(letter["reason"] for letter in letters) == _reasons(invalid)

    # Abacus: each job dead-letters what the bridge forwarded (<= 1 MiB, UTF-8), with the
    # contract's reason and the original bytes; the bridge dead-letters the larger ones
    records = _dlq_records(settings, names["kafka"]["dlq_topic"])
    by_source: dict[str, list[Any]] = {}
    for m in records:
        headers = dict(m.headers() or [])
        by_source.setdefault(headers.get("source", b"bridge").decode(), []).append(m)
    forwarded = [line for line in invalid if _utf8(line) and len(line) <= MAX_INPUT_BYTES]
    for job in ("abacus-statistic", "abacus-customer"):
        got = by_source.get(job, [])
        assert Counter(dict(m.headers())["reason"].decode() for m in got) == _reasons(forwarded)
        assert sorted(m.value() for m in got) == sorted(forwarded)
    too_big = [line for line in invalid if _utf8(line) and len(line) > MAX_INPUT_BYTES]
    bridged = [
        m for source, ms in by_source.items() if not source.startswith("abacus-") for m in ms
    ]
    assert len(bridged) == len(too_big)


CHROMIUM = "/usr/bin/chromium"


def test_the_console_shows_the_chaos_runs_dirty_date(
    runs: dict[str, Outcome], settings: Settings, tmp_path: Path
) -> None:
    """`abacus serve`'s console page, loaded in a real headless Chromium, over the chaos
    run's own keyspaces: the stage, and the run's dates dirty with legacy's drift. The
    screenshot is kept in the test's temporary directory."""
    import shutil
    import socket
    import urllib.request

    from services import procs
    from tests.waiting import wait_until

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: `abacus services install` installs it"
    chaos = runs["chaos"]
    dirty = sorted(a["date"] for a in chaos.doc["audits"] if a["outcome"] != "clean")
    assert dirty, chaos.doc["audits"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = settings.model_copy(
        update={
            "cassandra": settings.cassandra.model_copy(
                update={"keyspace_prefix": f"e2e_{chaos.doc['run_id']}_"}
            ),
            "serve": settings.serve.model_copy(update={"port": port}),
            "services": settings.services.model_copy(update={"data_dir": tmp_path / "data"}),
        }
    )
    server = procs.spawn(run, ["-m", "cli", "serve"], tmp_path / "serve.log")
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until("the read API answers", answers, 120)
        profile = tmp_path / "chromium"
        browser = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--window-size=1200,2400",
        ]
        url = f"http://127.0.0.1:{port}/"
        dom = subprocess.run(
            [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False
        )
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert "Abacus console" in page and 'id="stage">legacy<' in page, page[:2000]
        for date in dirty:
            assert date in page, f"{date} not on the page"
        assert "dirty" in page and 'id="drift"' in page
        shot = tmp_path / "console.png"
        done = subprocess.run(
            [*browser, f"--screenshot={shot}", url],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
        keep = os.environ.get("ABACUS_CONSOLE_SCREENSHOT")  # where to copy it for a look
        if keep:
            shutil.copy(shot, keep)
    finally:
        server.terminate()
        server.wait(30)


# what each kind of process exports (issue 15): found in Prometheus after the runs
FAMILIES = {
    "legacy": [
        "abacus_legacy_tasks_total",
        "abacus_legacy_dead_lettered_total",
        "abacus_legacy_bertha_pending_keys",
        "abacus_legacy_bertha_flush_age_seconds",
    ],
    "bridge": [
        "abacus_bridge_produced_total",
        "abacus_bridge_dead_lettered_total",
        "abacus_bridge_in_flight_messages",
    ],
    "flink": [
        "abacus_job_events_parsed_total",
        "abacus_job_dead_lettered_total",
        "abacus_job_increments_fanned_total",
        "abacus_job_increments_written_total",
        "abacus_job_restarts_total",
    ],
    "serve": [
        "abacus_serve_requests_total",
        "abacus_serve_request_seconds_bucket",
        "abacus_cutover_stage",
        "abacus_consumer_lag_messages",
        "abacus_legacy_queue_consumers",
    ],
}


def test_prometheus_scraped_every_part_and_alerts_on_the_dirty_dates(
    runs: dict[str, Outcome], prom: Prometheus, settings: Settings, tmp_path: Path
) -> None:
    # every kind of process was scraped, and up, while the runs ran
    up = prom.query("max by (job) (max_over_time(up[30m]))")
    seen = {r["metric"]["job"]: r["value"][1] for r in up}
    assert all(seen.get(kind) == "1" for kind in ("prometheus", *FAMILIES)), seen
    missing = [
        (kind, name)
        for kind, names in FAMILIES.items()
        for name in names
        if not prom.query(f"last_over_time({name}[30m])")
    ]
    assert missing == [], missing
    # the poison corpus reached every pipeline's dead letters
    for name in ("abacus_legacy_dead_lettered_total", "abacus_job_dead_lettered_total"):
        assert prom.query(f"max_over_time({name}[30m]) > 0"), name
    # the chaos run's audits, through a read API over its keyspaces: the dirty dates
    chaos = runs["chaos"]
    dirty = sorted(a["date"] for a in chaos.doc["audits"] if a["outcome"] != "clean")
    assert dirty, chaos.doc["audits"]
    api = ReadApi(settings, f"e2e_{chaos.doc['run_id']}_", tmp_path / "serve.log")
    try:
        found = wait_for(
            "Prometheus has the chaos run's dirty audit dates",
            lambda: prom.query('abacus_audit_outcome{outcome="dirty"} == 1'),
            lambda result: sorted(r["metric"]["date"] for r in result) == dirty,
            timeout_s=180,
        )
        assert {(r["metric"]["left"], r["metric"]["right"]) for r in found} == {
            ("legacy", "shadow")
        }
        firing = wait_for(
            "AbacusAuditDirty firing for each dirty date",
            lambda: prom.api("/api/v1/alerts")["alerts"],
            lambda alerts: (
                sorted(
                    a["labels"]["date"]
                    for a in alerts
                    if a["labels"]["alertname"] == "AbacusAuditDirty" and a["state"] == "firing"
                )
                == dirty
            ),
            timeout_s=180,
        )
        assert all(a["labels"]["severity"] == "critical" for a in firing if "date" in a["labels"])
    finally:
        api.stop()
