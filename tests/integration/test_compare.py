"""`abacus compare`, `dump`, `audits` on real Cassandra (and Kafka for --truth kafka).

Counts are loaded with CounterStore.write_* into keyspaces of this module's own prefix; each
test uses its own date, so the tests share the keyspaces without seeing each other's rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import root
from compare.audit import RunOptions, load_audit, run_audit
from compare.audits import AuditStore, clean_days, last_clean_days
from compare.report import CSV_FIELDS, FORMAT
from counting import Recount, to_line
from counting.generate import GeneratorConfig, generate
from settings.model import Settings
from storage import CounterStore, Prepared, connect, keyspace_of, statements

pytestmark = pytest.mark.integration

PREFIX = f"itcmp_{uuid.uuid4().hex[:8]}_"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg(settings: Settings, services_up: Any) -> Iterator[Settings]:
    cass = settings.cassandra.model_copy(update={"keyspace_prefix": PREFIX})
    mine = settings.model_copy(update={"cassandra": cass})
    session = connect(cass)
    try:
        for cql in statements(cass):
            session.execute(cql, timeout=120)
        yield mine
        for name in ("legacy", "shadow", "serving", "m2", "ops"):
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace_of(cass, name)}", timeout=120)
    finally:
        session.cluster.shutdown()


@pytest.fixture(scope="module")
def prepared(cfg: Settings) -> Iterator[Prepared]:
    session = connect(cfg.cassandra)
    yield Prepared(session)
    session.cluster.shutdown()


def events_of(
    day: str, n: int = 240, seed: int = 7, duplicates: float = 0.0, **kw: Any
) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
    config = GeneratorConfig(
        n=n,
        seed=seed,
        companies=4,
        customers=40,
        statistics=3,
        facets=2,
        timezones=("UTC",),
        duplicate_share=duplicates,
        start_ts=start,
        span_s=86_400,
        **kw,
    )
    return list(generate(config))


def recount_of(events: list[dict[str, Any]], dedup: bool = True) -> Recount:
    r = Recount(dedup=dedup)
    for e in events:
        r.add_raw(json.dumps(e))
    return r


def load(prepared: Prepared, cfg: Settings, store: str, r: Recount, change: Any = None) -> None:
    """Write a recount into a store; `change(list_of_counted)` may edit it first."""
    counted = [*r.account(), *r.customer()]
    if change is not None:
        counted = change(counted)
    s = CounterStore(prepared, cfg.cassandra, store)
    s.write_account([(c.key, c.count, c.uniques) for c in counted if hasattr(c, "uniques")])
    s.write_customer([(c.key, c.count) for c in counted if not hasattr(c, "uniques")])


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def cli(cfg: Settings, *args: str) -> Any:
    """Run `abacus ...` in process with this module's settings."""
    env = {"ABACUS_CASSANDRA__KEYSPACE_PREFIX": PREFIX}
    return CliRunner().invoke(root, list(args), env=env, catch_exceptions=False)


def options(tmp_path: Path, **kw: Any) -> RunOptions:
    return RunOptions(**{"settle_s": 0, "work_dir": tmp_path / "audits", **kw})


# -- identical sides ----------------------------------------------------------------------


def test_identical_sides_are_clean(cfg: Settings, prepared: Prepared, tmp_path: Path) -> None:
    day = "2025-10-01"
    events = events_of(day)
    r = recount_of(events)
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "shadow", r)
    truth = write_events(tmp_path / "events.jsonl", events)
    out = tmp_path / "report.json"
    result = cli(
        cfg,
        "compare",
        "--date",
        day,
        "--left",
        "legacy",
        "--right",
        "shadow",
        "--truth",
        str(truth),
        "--format",
        "json",
        "--out",
        str(out),
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "audits"),
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    s = report["summary"]
    assert report["audit"]["outcome"] == "clean"
    expected = sum(
        1
        for c in [*r.account(), *r.customer()]
        if c.key.resolution != "month" and c.key.bucket.startswith(day)
    )
    assert s["keys_compared"] == s["matched"] == expected > 0
    assert s["mismatched"] == 0 and report["mismatches"] == []
    assert s["totals"]["left_count"] == s["totals"]["right_count"] == s["totals"]["truth_count"]


# -- every class, the truth's verdict, attribution -----------------------------------------


def _inject(counted: list[Any]) -> list[Any]:
    """On the right side: drop keys, change keys (all in COM0001 at 05h), add one (at 23h),
    and at customer level change one; the truth is the unchanged recount."""
    day = next(c.key.bucket[:10] for c in counted if c.key.resolution == "day")
    out = []
    for c in counted:
        k = c.key
        if k.company_id == "COM0001" and k.resolution == "hour" and k.bucket.endswith("T05"):
            if hasattr(c, "uniques") and k.facet == "":
                continue  # the total of every statistic: only left
            if hasattr(c, "uniques") and k.facet:
                c = c._replace(count=c.count + 2)  # differs, truth with left
        out.append(c)
    extra = next(c for c in counted if hasattr(c, "uniques"))
    out.append(
        extra._replace(key=extra.key._replace(bucket=f"{day}T23", facet="ghost", value="x"))
    )  # only right
    cust = next(
        i for i, c in enumerate(out) if not hasattr(c, "uniques") and c.key.resolution == "day"
    )
    out[cust] = out[cust]._replace(count=out[cust].count + 1)
    return out


def injected_day(prepared: Prepared, cfg: Settings, day: str, tmp_path: Path) -> Path:
    """Load legacy = the recount, shadow = the recount with `_inject`; the events file."""
    events = events_of(day, seed=11)
    r = recount_of(events)
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "shadow", r, _inject)
    return write_events(tmp_path / "events.jsonl", events)


def test_injected_differences_are_found_classified_and_attributed(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    day = "2025-10-02"
    truth = injected_day(prepared, cfg, day, tmp_path)
    result = run_audit(cfg, day, "legacy", "shadow", str(truth), options=options(tmp_path))
    assert result.exit_code == 1 and result.outcome == "dirty"
    records = list(result.mismatches())
    classes = {(m["class"], m["truth_supports"]) for m in records}
    assert ("only_left", "left") in classes
    assert ("only_right", "left") in classes
    assert ("differs", "left") in classes
    ghost = [m for m in records if m["level"] == "account" and m["facet"] == "ghost"]
    assert len(ghost) == 1 and ghost[0]["class"] == "only_right"
    assert ghost[0]["left_count"] is None and ghost[0]["truth_count"] is None
    customer = [m for m in records if m["level"] == "customer"]
    assert len(customer) == 1 and customer[0]["delta_count"] == 1
    assert customer[0]["truth_supports"] == "left"
    for m in records:
        if m["class"] == "differs" and m["level"] == "account":
            assert m["delta_count"] == 2 and m["bucket"] == f"{day}T05"
    s = result.summary
    assert s["classes"]["only_left"] == sum(m["class"] == "only_left" for m in records) > 0
    assert s["truth_supports"]["left"] == len(records)
    assert s["attribution"]["companies"][0]["label"] == "COM0001"
    assert s["attribution"]["hours"][0]["label"] == f"{day}T05"
    assert s["hour_chart"]["right"][5] > 0 and s["hour_chart"]["left"][5] == 0


def test_legacy_redeliveries_show_as_such(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    """Legacy counts every delivery: the truth sides with the shadow, and the audit names
    the redeliveries; --allow-redeliveries turns exactly those into non-defects."""
    day = "2025-10-03"
    events = events_of(day, seed=5, duplicates=0.05)
    load(prepared, cfg, "legacy", recount_of(events, dedup=False))
    load(prepared, cfg, "shadow", recount_of(events))
    truth = write_events(tmp_path / "events.jsonl", events)
    strict = run_audit(cfg, day, "legacy", "shadow", str(truth), options=options(tmp_path))
    records = list(strict.mismatches())
    assert records and strict.exit_code == 1
    assert all(m["truth_supports"] == "right" for m in records)
    assert all(m["redelivery"] == "left" for m in records)
    assert all(m["left_count"] == m["deliveries_count"] for m in records)
    assert strict.summary["redeliveries"] == {"left": len(records), "right": 0}
    assert strict.summary["truth"]["duplicates"] > 0
    lenient = run_audit(
        cfg, day, "legacy", "shadow", str(truth), allow_redeliveries=True, options=options(tmp_path)
    )
    assert lenient.exit_code == 0 and lenient.summary["mismatched"] == len(records)
    assert lenient.summary["defects"] == 0


# -- tolerance, exit codes, JSON stability ----------------------------------------------


def _off_by_one(counted: list[Any]) -> list[Any]:
    return [
        c._replace(count=c.count + 1)
        if hasattr(c, "uniques") and c.key.resolution == "day" and c.key.facet == ""
        else c
        for c in counted
    ]


def test_tolerance_and_exit_codes(cfg: Settings, prepared: Prepared, tmp_path: Path) -> None:
    day = "2025-10-04"
    r = recount_of(events_of(day, seed=3))
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "m2", r, _off_by_one)
    base = [
        "compare",
        "--date",
        day,
        "--left",
        "legacy",
        "--right",
        "m2",
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "audits"),
        "--no-progress",
        "--format",
        "jsonl",
    ]
    exact = cli(cfg, *base)
    assert exact.exit_code == 1
    lines = [json.loads(line) for line in exact.stdout.splitlines()]
    assert lines[0]["type"] == "audit" and lines[0]["exit_code"] == 1
    assert {m["class"] for m in lines[1:]} == {"differs"} and len(lines) > 1
    assert cli(cfg, *base, "--tolerance", "count=1").exit_code == 0
    assert cli(cfg, *base, "--tolerance", "count=50%").exit_code == 0
    assert cli(cfg, *base, "--tolerance", "uniques=5").exit_code == 1
    bad = cli(cfg, *base, "--tolerance", "count=lots")
    assert bad.exit_code == 2 and "--tolerance" in bad.output
    bad_store = cli(cfg, "compare", "--date", day, "--left", "nosuch")
    assert bad_store.exit_code == 2
    missing = cli(cfg, "compare", "--date", day, "--truth", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output


def test_unreachable_cassandra_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "ABACUS_CASSANDRA__PORT": "1", "ABACUS_CASSANDRA__PASSWORD": "s3cret"}
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/abacus"),
            "compare",
            "--date",
            "2025-10-04",
            "--work-dir",
            str(tmp_path),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Cassandra" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout


AUDIT_FIELDS = {
    "format",
    "audit_id",
    "date",
    "left",
    "right",
    "truth",
    "state",
    "outcome",
    "exit_code",
    "started_at",
    "ended_at",
    "params",
    "detail_available",
}
SUMMARY_FIELDS = {
    "keys_compared",
    "matched",
    "mismatched",
    "defects",
    "classes",
    "levels",
    "truth_supports",
    "redeliveries",
    "errors",
    "totals",
    "attribution",
    "hour_chart",
    "units",
    "truth",
    "queries",
    "mirror_overflow",
}
ACCOUNT_RECORD = [
    "class",
    "level",
    "company_id",
    "statistic_id",
    "resolution",
    "bucket",
    "facet",
    "value",
    "left_count",
    "right_count",
    "truth_count",
    "delta_count",
    "left_uniques",
    "right_uniques",
    "truth_uniques",
    "delta_uniques",
    "deliveries_count",
    "truth_supports",
    "redelivery",
    "defect",
]
CUSTOMER_RECORD = [
    "class",
    "level",
    "company_id",
    "customer_id",
    "statistic_id",
    "resolution",
    "bucket",
    "left_count",
    "right_count",
    "truth_count",
    "delta_count",
    "deliveries_count",
    "truth_supports",
    "redelivery",
    "defect",
]


def test_json_output_is_stable_and_documented(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    day = "2025-10-13"
    truth = injected_day(prepared, cfg, day, tmp_path)
    out = tmp_path / "r.json"
    result = cli(
        cfg,
        "compare",
        "--date",
        day,
        "--truth",
        str(truth),
        "--format",
        "json",
        "--out",
        str(out),
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "a"),
        "--no-progress",
    )
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    assert set(report) == {"format", "audit", "summary", "mismatches"}
    assert report["format"] == FORMAT
    assert set(report["audit"]) == AUDIT_FIELDS
    assert set(report["summary"]) == SUMMARY_FIELDS
    levels = {m["level"]: list(m) for m in report["mismatches"]}
    assert levels["account"] == ACCOUNT_RECORD and levels["customer"] == CUSTOMER_RECORD
    assert set(CSV_FIELDS) == set(ACCOUNT_RECORD) | set(CUSTOMER_RECORD)
    readme = (REPO / "compare" / "README.md").read_text()
    for name in SUMMARY_FIELDS | AUDIT_FIELDS | set(CSV_FIELDS):
        assert f"`{name}`" in readme, f"{name} is not documented in compare/README.md"
    csv_out = cli(
        cfg,
        "audits",
        "show",
        report["audit"]["audit_id"],
        "--format",
        "csv",
        "--work-dir",
        str(tmp_path / "a"),
    )
    assert csv_out.stdout.splitlines()[0] == ",".join(CSV_FIELDS)
    assert len(csv_out.stdout.splitlines()) == 1 + len(report["mismatches"])


# -- settle and re-read; resume -------------------------------------------------------------


def test_writes_in_flight_are_reread_before_reporting(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    day = "2025-10-05"
    r = recount_of(events_of(day, seed=9))
    counted = [*r.account(), *r.customer()]
    late = next(c for c in counted if hasattr(c, "uniques") and c.key.resolution == "hour")
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "shadow", r, lambda cs: [c for c in cs if c.key != late.key])
    seen: list[Any] = []

    def complete_the_write(candidates: list[Any]) -> None:
        seen.extend(candidates)
        CounterStore(prepared, cfg.cassandra, "shadow").write_account(
            [(late.key, late.count, late.uniques)]
        )

    result = run_audit(
        cfg,
        day,
        "legacy",
        "shadow",
        options=options(tmp_path, settle_s=0.2),
        on_candidates=complete_the_write,
    )
    assert [m.key for m in seen] == [late.key]  # the first read saw it missing
    assert result.exit_code == 0 and result.summary["mismatched"] == 0
    # the re-read key replaces its first reading in the tally, not adds to it
    summary = result.summary
    assert (
        summary["matched"]
        == summary["keys_compared"]
        == len([c for c in counted if c.key.resolution != "month" and c.key.bucket[:10] == day])
    )
    assert summary["totals"]["left_count"] == summary["totals"]["right_count"]


def _result_view(result: Any) -> tuple[Any, list[Any]]:
    summary = {k: v for k, v in result.summary.items() if k != "queries"}
    return summary, list(result.mismatches())


def test_killed_audit_resumes_to_the_same_result(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    day = "2025-10-06"
    events = events_of(day, seed=21, duplicates=0.03)
    load(prepared, cfg, "legacy", recount_of(events, dedup=False))
    load(prepared, cfg, "shadow", recount_of(events), _off_by_one)
    truth = write_events(tmp_path / "events.jsonl", events)
    whole = run_audit(cfg, day, "legacy", "shadow", str(truth), options=options(tmp_path))

    work = tmp_path / "killed"

    def four_units_done() -> Any:
        found = list(work.glob("*/progress.json"))
        progress = json.loads(found[0].read_text()) if found else None
        return progress if progress and progress["units_done"] >= 4 else None

    progress = _audit_killed_when(
        four_units_done,
        args=[
            "--date",
            day,
            "--truth",
            str(truth),
            "--settle-s",
            "0",
            "--chunk-units",
            "2",
            "--max-rps",
            "8",
            "--work-dir",
            str(work),
        ],
    )
    assert progress is not None
    (spool,) = list(work.iterdir())
    audit_id = spool.name
    plan = json.loads((spool / "plan.json").read_text())
    assert progress["units_done"] < len(plan["units"])
    store = AuditStore(prepared, cfg.cassandra)
    assert store.get(audit_id).state == "running"

    resumed = cli(
        cfg,
        "compare",
        "--resume",
        audit_id,
        "--work-dir",
        str(work),
        "--format",
        "json",
        "--no-progress",
        "--max-rps",
        "0",
    )
    assert resumed.exit_code == whole.exit_code == 1
    again = load_audit(cfg, audit_id, work)
    assert again.record.state == "done"
    got, want = _result_view(again), _result_view(whole)
    for k in want[0]:
        assert got[0][k] == want[0][k], k
    assert got == want


def _audit_killed_when(ready: Any, args: list[str], timeout_s: float = 120) -> Any:
    """Run `abacus compare *args` and SIGKILL it as soon as `ready()` returns something,
    which is returned (None if the audit ended or the time ran out first)."""
    env = {**os.environ, "ABACUS_CASSANDRA__KEYSPACE_PREFIX": PREFIX}
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/abacus"), "compare", *args, "--no-progress", "--format", "json"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = None
    try:
        deadline = time.monotonic() + timeout_s
        while seen is None and time.monotonic() < deadline and proc.poll() is None:
            seen = ready()
            time.sleep(0.01)
        assert proc.poll() is None, "the audit ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return seen


def _without(company: str) -> Any:
    return lambda counted: [c for c in counted if c.key.company_id != company]


def test_units_only_the_truth_has_come_last_also_when_killed_before_the_truth(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    """The truth is recounted while the stores are read: the plan starts with the stores'
    units and the units only the truth has (a company neither store counted) are appended
    once it arrives, and compared. An audit killed before its truth arrived (the plan still
    without them) resumes to the result of an uninterrupted one."""
    day = "2025-10-15"
    events = events_of(day, seed=23)
    r = recount_of(events)
    load(prepared, cfg, "legacy", r, _without("COM0003"))
    load(prepared, cfg, "shadow", r, _without("COM0003"))
    # Events of another month, parsed by the recount and counted on no date of this audit:
    # they keep the truth busy for a while (never waited for: the assertions hold anyway).
    elsewhere = events_of("2025-08-01", n=40_000, seed=24)
    truth = write_events(tmp_path / "events.jsonl", [*elsewhere, *events])
    whole = run_audit(cfg, day, "legacy", "shadow", str(truth), options=options(tmp_path))
    plan = json.loads((tmp_path / "audits" / whole.audit_id / "plan.json").read_text())
    units = plan["units"]
    theirs = [u for u in units if u[1][0] == "COM0003"]
    assert plan["complete"] and theirs and units[-len(theirs) :] == theirs
    assert sorted(units[: -len(theirs)]) == units[: -len(theirs)]
    records = list(whole.mismatches())
    assert records and all(
        m["company_id"] == "COM0003" and m["class"] == "match" and m["truth_supports"] == "neither"
        for m in records
    )
    assert whole.summary["units"] == len(units)

    work = tmp_path / "killed"

    def plan_written() -> Any:
        found = list(work.glob("*/plan.json"))
        return json.loads(found[0].read_text()) if found else None

    seen = _audit_killed_when(
        plan_written,
        args=["--date", day, "--truth", str(truth), "--settle-s", "0", "--work-dir", str(work)],
    )
    assert seen is not None and not seen["complete"]
    (spool,) = list(work.iterdir())
    assert not (spool / "progress.json").exists()  # nothing diffed without the truth
    resumed = cli(
        cfg,
        "compare",
        "--resume",
        spool.name,
        "--work-dir",
        str(work),
        "--format",
        "json",
        "--no-progress",
    )
    assert resumed.exit_code == whole.exit_code == 1
    assert json.loads((spool / "plan.json").read_text()) == plan
    assert _result_view(load_audit(cfg, spool.name, work)) == _result_view(whole)


# -- truth from Kafka ---------------------------------------------------------------------


def test_truth_from_kafka_equals_truth_from_file(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    day = "2025-10-07"
    events = events_of(day, seed=4, duplicates=0.05)
    other_day = events_of("2025-10-09", n=40, seed=4)  # outside the date: read, not counted
    load(prepared, cfg, "legacy", recount_of(events, dedup=False))
    load(prepared, cfg, "shadow", recount_of(events))
    topic = f"itcmp.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(cfg.kafka.client_config())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(
        timeout=60
    )
    try:
        producer = Producer(cfg.kafka.client_config())
        for e in [
            *events,
            *other_day,
        ]:
            producer.produce(topic, key=e["company_id"].encode(), value=json.dumps(e).encode())
        producer.produce(topic, key=b"x", value=b"{not json")
        assert producer.flush(60) == 0
        kcfg = cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update={"topic": topic})})
        from_kafka = run_audit(kcfg, day, "legacy", "shadow", "kafka", options=options(tmp_path))
        truth = write_events(tmp_path / "events.jsonl", events)
        from_file = run_audit(cfg, day, "legacy", "shadow", str(truth), options=options(tmp_path))
        stats = from_kafka.summary["truth"]
        assert stats["events_read"] == len(events) + len(other_day) + 1
        assert stats["rejected"] == {"not_json": 1}
        bounds = from_kafka.params.kafka_bounds
        assert bounds is not None and sum(e - f for f, e in bounds.values()) == stats["events_read"]
        assert list(from_kafka.mismatches()) == list(from_file.mismatches())
        assert from_kafka.summary["redeliveries"]["left"] > 0
    finally:
        admin.delete_topics([topic])


# -- dump, audits, gates, html ------------------------------------------------------------


def test_dump_prints_the_recount_lines(cfg: Settings, prepared: Prepared) -> None:
    day = "2025-10-08"
    r = recount_of(events_of(day, seed=8))
    load(prepared, cfg, "serving", r)
    result = cli(cfg, "dump", "--store", "serving", "--date", day, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    expected = {to_line(c) for c in [*r.account(), *r.customer()] if c.key.resolution != "month"}
    assert set(result.stdout.splitlines()) == expected
    with_month = cli(cfg, "dump", "--store", "serving", "--date", day, "--include-month")
    months = [json.loads(line) for line in with_month.stdout.splitlines()]
    assert {m["resolution"] for m in months} == {"hour", "day", "month"}
    assert cli(cfg, "dump", "--store", "serving", "--include-month").exit_code == 2


def test_audit_history_list_show_and_gate(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    days = ["2025-10-10", "2025-10-11", "2025-10-12"]
    truths = {}
    for day in days:
        events = events_of(day, n=60, seed=2)
        truths[day] = str(write_events(tmp_path / f"{day}.jsonl", events))
        r = recount_of(events)
        load(prepared, cfg, "shadow", r)
        load(prepared, cfg, "serving", r, _off_by_one if day == "2025-10-11" else None)
    ids = [
        run_audit(cfg, d, "shadow", "serving", truths[d], options=options(tmp_path)).audit_id
        for d in days
    ]
    store = AuditStore(prepared, cfg.cassandra)
    assert [r.audit_id for r in store.of_date(days[1])] == [ids[1]]
    gate = clean_days(store, "shadow", "serving", 3, until=days[2])
    assert not gate.clean and [d.outcome for d in gate.days] == ["clean", "dirty", "clean"]
    assert gate.audit_ids == ids
    # the day is fixed (serving's extra increments taken back) and audited again: the latest
    # full-scope audit decides
    fixed = recount_of(events_of(days[1], n=60, seed=2))
    CounterStore(prepared, cfg.cassandra, "serving").write_account(
        [(c.key, -1, 0) for c in fixed.account() if c.key.resolution == "day" and c.key.facet == ""]
    )
    run_audit(cfg, days[1], "shadow", "serving", truths[days[1]], options=options(tmp_path))
    assert last_clean_days(cfg, "shadow", "serving", 3, until=days[2]).clean
    assert not last_clean_days(cfg, "shadow", "serving", 4, until=days[2]).clean  # 09: none
    assert not last_clean_days(cfg, "serving", "shadow", 3, until=days[2]).clean

    listed = cli(cfg, "audits", "list", "--date", days[1], "--format", "json")
    rows = json.loads(listed.stdout)
    assert [r["outcome"] for r in rows] == ["clean", "dirty"]
    shown = cli(
        cfg, "audits", "show", ids[1], "--format", "json", "--work-dir", str(tmp_path / "audits")
    )
    assert shown.exit_code == 1 and json.loads(shown.stdout)["audit"]["audit_id"] == ids[1]
    assert cli(cfg, "audits", "show", "no-such-audit").exit_code == 2
    gate_cli = cli(
        cfg,
        "audits",
        "gate",
        "--left",
        "shadow",
        "--right",
        "serving",
        "--days",
        "3",
        "--until",
        days[2],
    )
    assert gate_cli.exit_code == 0 and "clean" in gate_cli.stdout


def test_a_narrowed_audit_never_decides_a_gate(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    """A dirty full audit of a date is not hidden by later clean audits narrowed by
    --company, --statistic, --level, --tolerance or --truth none; they are listed, not
    counted. A later full-scope clean audit does decide."""
    day = "2025-10-20"
    events = events_of(day, n=80, seed=11)
    truth = str(write_events(tmp_path / "events.jsonl", events))
    r = recount_of(events)
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "m2", r, _off_by_one)  # every company's day totals are off by one
    base = [
        "compare",
        "--date",
        day,
        "--left",
        "legacy",
        "--right",
        "m2",
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "audits"),
        "--no-progress",
        "--format",
        "json",
        "--out",
        str(tmp_path / "report.json"),
    ]
    gate = ["audits", "gate", "--left", "legacy", "--right", "m2", "--days", "1", "--until", day]
    assert cli(cfg, *base, "--truth", truth).exit_code == 1  # the full audit: dirty
    narrowed = {  # each clean because it cannot see the difference
        "company filter": ["--truth", truth, "--company", "no-such-company"],
        "statistic filter": ["--truth", truth, "--statistic", "no-such-statistic"],
        "level customer only": ["--truth", truth, "--level", "customer"],
        "tolerance looser than the gate's": ["--truth", truth, "--tolerance", "count=1"],
        "no truth": ["--truth", "none", "--level", "customer"],
    }
    for reason, args in narrowed.items():
        assert cli(cfg, *base, *args).exit_code == 0, reason
        verdict = cli(cfg, *gate, "--format", "json")
        assert verdict.exit_code == 1, reason
        (row,) = json.loads(verdict.stdout)["days"]
        assert row["outcome"] == "dirty", reason
        assert any(reason in n["narrowed_by"] for n in row["not_counted"]), (reason, row)
    text = cli(cfg, *gate)
    assert text.exit_code == 1 and text.stdout.count("not counted:") == len(narrowed)
    listed = json.loads(cli(cfg, "audits", "list", "--date", day, "--format", "json").stdout)
    assert [r["narrowed_by"] == [] for r in listed] == [False] * len(narrowed) + [True]
    assert text.stdout.splitlines()[0].startswith(f"{day} dirty ")
    # the gate may accept the tolerance the narrowed audit used: then that one decides
    assert cli(cfg, *gate, "--tolerance", "count=1").exit_code == 0
    assert cli(cfg, *gate, "--tolerance", "count=x").exit_code == 2
    # fixed, and audited again in full: the later full-scope audit decides
    CounterStore(prepared, cfg.cassandra, "m2").write_account(
        [
            (c.key, c.count, c.uniques)
            for c in r.account()
            if c.key.resolution == "day" and c.key.facet == ""
        ]
    )
    assert cli(cfg, *base, "--truth", truth).exit_code == 0
    assert cli(cfg, *gate).exit_code == 0


def test_audit_list_renders_poisoned_values(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    """An audit record holding markup and control characters (here: its truth file's name)
    prints as text in `audits list`, never as markup or raw terminal controls."""
    from settings.output import visible

    day = "2025-10-21"
    events = events_of(day, n=20, seed=12)
    (tmp_path / "[").mkdir()  # the path then holds "[/bold]", an unmatched closing tag
    truth = write_events(tmp_path / "[" / "bold][link=evil]x\x1b[31m\u202e.jsonl", events)
    name = str(truth)
    r = recount_of(events)
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "shadow", r)
    run_audit(cfg, day, "legacy", "shadow", str(truth), options=options(tmp_path))
    listed = CliRunner().invoke(
        root,
        ["audits", "list", "--date", day],
        env={"ABACUS_CASSANDRA__KEYSPACE_PREFIX": PREFIX, "COLUMNS": "1000"},
        catch_exceptions=False,
    )
    assert listed.exit_code == 0, listed.output
    assert visible(name) in listed.stdout
    assert "\x1b" not in listed.stdout and "\u202e" not in listed.stdout


def test_compare_renders_poisoned_ids_and_exits_by_outcome(
    cfg: Settings, prepared: Prepared, tmp_path: Path
) -> None:
    """Company and statistic ids holding rich markup, a terminal hyperlink, ANSI and bidi
    controls: the table prints them as text and `compare` exits 1 (dirty), not 2; the CSV
    neutralises a formula."""
    import csv
    import io

    from settings.output import visible

    day = "2025-10-22"
    ids = {
        "[/bold]": "[link=https://evil.example]x[/link]",
        '=HYPERLINK("x")': "s\x1b[31m",
        "c\u202e": "@stat",
    }
    events = [
        {**e, "company_id": list(ids)[i % 3], "statistic_id": ids[list(ids)[i % 3]]}
        for i, e in enumerate(events_of(day, n=30, seed=13))
    ]
    truth = write_events(tmp_path / "events.jsonl", events)
    r = recount_of(events)
    load(prepared, cfg, "legacy", r)
    load(prepared, cfg, "shadow", r, _off_by_one)
    base = [
        "compare",
        "--date",
        day,
        "--truth",
        str(truth),
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "a"),
        "--no-progress",
    ]
    env = {"ABACUS_CASSANDRA__KEYSPACE_PREFIX": PREFIX, "COLUMNS": "1000"}
    table = CliRunner().invoke(root, base, env=env, catch_exceptions=False)
    assert table.exit_code == 1, table.output
    for value in (*ids, *ids.values()):
        assert visible(value) in table.stdout, value
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
    as_csv = CliRunner().invoke(root, [*base, "--format", "csv"], env=env, catch_exceptions=False)
    assert as_csv.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {row["company_id"] for row in rows} == {"[/bold]", '\'=HYPERLINK("x")', "c\u202e"}
    assert "'@stat" in {row["statistic_id"] for row in rows}


def test_html_report_is_self_contained(cfg: Settings, prepared: Prepared, tmp_path: Path) -> None:
    day = "2025-10-14"
    truth = injected_day(prepared, cfg, day, tmp_path)
    out = tmp_path / "report.html"
    result = cli(
        cfg,
        "compare",
        "--date",
        day,
        "--truth",
        str(truth),
        "--format",
        "html",
        "--out",
        str(out),
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "a"),
        "--no-progress",
    )
    assert result.exit_code == 1
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<rect" in html
    assert "<script" not in html and "src=" not in html and "<link" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


def test_progress_output_goes_to_stderr_only(cfg: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "ABACUS_CASSANDRA__KEYSPACE_PREFIX": PREFIX}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "compare",
            "--date",
            "2025-10-01",
            "--settle-s",
            "0",
            "--work-dir",
            str(tmp_path),
            "--format",
            "jsonl",
            "--progress",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["type"] == "audit"
