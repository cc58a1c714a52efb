"""`abacus audits run` on the real servers: events published to an isolated exchange reach
an isolated mirror topic through a managed shadow bridge (the truth of the audits); the
stores are loaded in this module's own keyspaces; the recorded outcomes decide
`audits gate`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge import manage
from cli import root
from compare.audits import AuditStore, narrowed_by
from counting import Recount
from counting.generate import GeneratorConfig, generate
from settings.model import Settings
from storage import CounterStore, Prepared, connect, keyspace_of, statements
from tests.integration.bridge_env import celery_message, isolated

pytestmark = pytest.mark.integration

PREFIX = f"itaud_{uuid.uuid4().hex[:8]}_"
DAYS = ["2025-09-01", "2025-09-02", "2025-09-03"]


@pytest.fixture(scope="module")
def cfg(
    settings: Settings, services_up: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """This module's keyspaces, and an isolated exchange, queues and mirror topic holding
    the days' events (published as Celery tasks, carried by a managed shadow bridge)."""
    cass = settings.cassandra.model_copy(update={"keyspace_prefix": PREFIX})
    session = connect(cass)
    try:
        for cql in statements(cass):
            session.execute(cql, timeout=120)
        data_dir = tmp_path_factory.mktemp("data")
        with isolated(settings.model_copy(update={"cassandra": cass}), data_dir) as env:
            events = days_events()
            manage.start(env.settings, "shadow")
            try:
                env.publish(
                    [celery_message(json.dumps(e), task_id=f"t{i}") for i, e in enumerate(events)]
                )
                wait_acked(env.settings, len(events))
            finally:
                stopped = manage.stop(env.settings, "shadow")
            assert stopped["stopped_cleanly"], stopped
            yield env.settings
        for name in ("legacy", "shadow", "serving", "m2", "ops"):
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace_of(cass, name)}", timeout=120)
    finally:
        session.cluster.shutdown()


def wait_acked(settings: Settings, n: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while time.monotonic() < deadline:
        seen = (manage.status(settings, "shadow").get("totals") or {}).get("acked")
        if seen == n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the shadow bridge acked {seen} of {n} messages in {timeout_s}s")


def days_events() -> list[dict[str, Any]]:
    start = int(datetime.fromisoformat(DAYS[0]).replace(tzinfo=UTC).timestamp())
    config = GeneratorConfig(
        n=450,
        seed=3,
        companies=4,
        customers=40,
        statistics=2,
        facets=1,
        timezones=("UTC", "America/New_York"),
        start_ts=start,
        span_s=len(DAYS) * 86_400,
    )
    return list(generate(config))


@pytest.fixture(scope="module")
def loaded(cfg: Settings) -> Iterator[Recount]:
    """legacy = shadow = the recount of every event, but shadow counts one more in one of
    the second day's day buckets (a dirty pair on that date, clean ones on the others)."""
    r = Recount()
    for e in days_events():
        r.add_raw(json.dumps(e))
    session = connect(cfg.cassandra)
    prepared = Prepared(session)
    try:
        for store in ("legacy", "shadow"):
            s = CounterStore(prepared, cfg.cassandra, store)
            s.write_account([(c.key, c.count, c.uniques) for c in r.account()])
            s.write_customer([(c.key, c.count) for c in r.customer()])
        bump(cfg, prepared, r, +1)
        yield r
    finally:
        session.cluster.shutdown()


def _second_day_total(r: Recount) -> Any:
    return next(
        c
        for c in r.account()
        if c.key.resolution == "day" and c.key.bucket == DAYS[1] and c.key.facet == ""
    )


def bump(cfg: Settings, prepared: Prepared, r: Recount, by: int) -> None:
    counted = _second_day_total(r)
    CounterStore(prepared, cfg.cassandra, "shadow").write_account([(counted.key, by, 0)])


def cli(cfg: Settings, *args: str) -> Any:
    env = {
        "ABACUS_CASSANDRA__KEYSPACE_PREFIX": PREFIX,
        "ABACUS_KAFKA__TOPIC": cfg.kafka.topic,
        "ABACUS_KAFKA__DLQ_TOPIC": cfg.kafka.dlq_topic,
    }
    return CliRunner().invoke(root, list(args), env=env, catch_exceptions=False)


def audit(cfg: Settings, tmp_path: Path, *args: str) -> Any:
    return cli(
        cfg,
        "audits",
        "run",
        *args,
        "--format",
        "json",
        "--settle-s",
        "0",
        "--work-dir",
        str(tmp_path / "audits"),
    )


def test_audits_run_records_full_scope_outcomes_that_decide_the_gate(
    cfg: Settings, loaded: Recount, tmp_path: Path
) -> None:
    outcomes = {}
    for day in DAYS:
        result = audit(cfg, tmp_path, "--date", day)
        report = json.loads(result.stdout)
        outcomes[day] = (result.exit_code, report["audit"]["outcome"])
        assert report["audit"]["truth"] == "kafka"
        assert report["summary"]["truth"]["events_read"] == len(days_events())
    assert outcomes == {DAYS[0]: (0, "clean"), DAYS[1]: (1, "dirty"), DAYS[2]: (0, "clean")}

    session = connect(cfg.cassandra)
    try:
        store = AuditStore(Prepared(session), cfg.cassandra)
        (record,) = store.of_date(DAYS[1])
    finally:
        session.cluster.shutdown()
    assert (record.left, record.right, record.state, record.outcome) == (
        "legacy",
        "shadow",
        "done",
        "dirty",
    )
    assert narrowed_by(record) == []  # full scope: it decides its day

    gate = ["audits", "gate", "--left", "legacy", "--right", "shadow", "--until", DAYS[2]]
    refused = cli(cfg, *gate, "--format", "json")
    assert refused.exit_code == 1
    assert [d["outcome"] for d in json.loads(refused.stdout)["days"]] == ["clean", "dirty", "clean"]

    # the second day fixed in the shadow store and audited again: the latest audit decides
    session = connect(cfg.cassandra)
    try:
        bump(cfg, Prepared(session), loaded, -1)
    finally:
        session.cluster.shutdown()
    again = audit(cfg, tmp_path, "--date", DAYS[1])
    assert again.exit_code == 0, again.output
    passed = cli(cfg, *gate, "--format", "json")
    assert passed.exit_code == 0, passed.output
    verdict = json.loads(passed.stdout)
    assert verdict["days"][1]["audit_id"] == json.loads(again.stdout)["audit"]["audit_id"]


def test_audits_run_refuses_what_cannot_decide_a_gate(cfg: Settings, tmp_path: Path) -> None:
    today = datetime.now(UTC).date().isoformat()
    open_day = audit(cfg, tmp_path, "--date", today)
    assert open_day.exit_code == 2 and "not over in every time zone" in open_day.output
    both = audit(cfg, tmp_path, "--date", DAYS[0], "--yesterday")
    assert both.exit_code == 2 and "one of them" in both.output
    neither = audit(cfg, tmp_path)
    assert neither.exit_code == 2
    no_truth = audit(cfg, tmp_path, "--date", DAYS[0], "--truth", "none")
    assert no_truth.exit_code == 2 and "needs a truth" in no_truth.output


def test_yesterday_is_the_utc_date_before_today(cfg: Settings, tmp_path: Path) -> None:
    """Before 12:00 UTC yesterday is still today somewhere (UTC-12): refused, naming it;
    after, audited (nothing of this module's on that date: clean) and recorded under it."""
    now = datetime.now(UTC)
    yesterday = (now.date() - timedelta(days=1)).isoformat()
    result = audit(cfg, tmp_path, "--yesterday")
    if result.exit_code == 2:
        assert now.hour < 13 and f"{yesterday} is not over" in result.output, result.output
    else:
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["audit"]["date"] == yesterday
