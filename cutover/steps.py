"""The stages' transitions, gates and steps (DESIGN.md, "Cutover stages"), and what runs in
each stage: the data the machine (`cutover.machine`) runs.

Every step is idempotent (it checks before it acts: a bridge that runs is left running, a
job that is RUNNING is not launched again, a stop of what is not running does nothing), so
a transition interrupted at any point is finished by running its steps again from the one
it was in, or undone by the reverse transition's steps.

- legacy -> shadow (gate: the four servers answer): the schema, the topics and the bounded
  mirror queue on the production exchange; the shadow jobs (target shadow, on the mirror
  topic `kafka.topic`) and the shadow bridge as managed long-running components.
- shadow -> m1 (gate: N consecutive clean daily audits, legacy vs shadow with the truth):
  legacy's workers stop consuming (Celery remote control, the stage's flag in Redis, Big
  Bertha flushed empty); legacy's Check Uniques sets written as seed records into a fresh
  live topic; the serving jobs (into the serving tables: legacy's counter tables) start from
  that topic's beginning and absorb the seeds; then the live bridge consumes the legacy
  queue into the live topic, its only consumer.
- m1 -> shadow: the live bridge stops (acks only what Kafka confirmed); the serving jobs
  drain and stop with a savepoint; what Abacus counted unique during m1 is back-filled into
  legacy's Check Uniques; legacy's workers consume again.
- shadow -> legacy: the shadow bridge and jobs stop; the mirror queue is removed (the mirror
  topic and the shadow store stay: audits of past dates still read them).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cutover.machine import Context, Gate, Step, Transition, Transitions
from settings import Settings

SHADOW_PREFIX = "cutover-"  # the shadow jobs: cutover-statistic, cutover-customer
SHADOW_BRIDGE = "shadow"
LIVE_BRIDGE = "live"
LIVE_TAG = "abacus-bridge-live"  # the live bridge's consumer tags start with it


def live_topic(settings: Settings, epoch: int) -> str:
    """Each entry into m1 counts a fresh topic from its beginning."""
    return f"{settings.cutover.live_topic}.e{epoch}"


def serving_prefix(epoch: int) -> str:
    return f"m1e{epoch}-"


def job_names(target: str, prefix: str) -> list[str]:
    from abacus.pipeline import KINDS, job_name

    return [job_name(kind, target, prefix) for kind in KINDS]


# -- gates ---------------------------------------------------------------------------------


def services_gate(settings: Settings) -> Gate:
    """Cassandra, Kafka, RabbitMQ and Redis answer."""
    answers = {name: _ping(name, settings) for name in ("cassandra", "kafka", "rabbitmq", "redis")}
    return Gate(
        "Cassandra, Kafka, RabbitMQ and Redis answer",
        all(v == "ok" for v in answers.values()),
        {"services": answers},
    )


def _ping(name: str, settings: Settings) -> str:
    try:
        if name == "cassandra":
            from storage import connect

            connect(settings.cassandra).cluster.shutdown()
        elif name == "kafka":
            from confluent_kafka.admin import AdminClient

            AdminClient(settings.kafka.client_config()).list_topics(timeout=10)
        elif name == "rabbitmq":
            from bridge import rabbit

            with rabbit.connect(settings.rabbitmq, heartbeat_s=0):
                pass
        else:
            from legacy.aggregation import redis_client

            client = redis_client(settings, timeout_s=5.0)
            try:
                client.ping()
            finally:
                client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def last_audited_date(now_s: float | None = None) -> str:
    """The latest date that is over in every time zone (`counting.buckets.date_over_s`):
    the last date a daily audit can have judged. Yesterday (UTC) from 12:00 UTC on, the day
    before until then, so the gate never waits for an audit that cannot have run yet."""
    from counting.buckets import date_over_s

    now_s = time.time() if now_s is None else now_s
    day = datetime.fromtimestamp(now_s, UTC).date() - timedelta(days=1)
    while date_over_s(day.isoformat()) > now_s:
        day -= timedelta(days=1)
    return day.isoformat()


def audits_gate(settings: Settings) -> Gate:
    """The last `cutover.gate_days` dates that are over everywhere each have a clean
    full-scope audit of legacy vs shadow with the truth (`abacus audits run`)."""
    from compare.audits import last_clean_days

    n = settings.cutover.gate_days
    days = last_clean_days(settings, "legacy", "shadow", n, until=last_audited_date())
    return Gate(
        f"{n} consecutive clean daily audits of legacy vs shadow with the truth "
        f"(the last ending {days.days[-1].date})",
        days.clean,
        {"days": [d.to_dict() for d in days.days]},
        tuple(days.audit_ids),
    )


# -- steps ---------------------------------------------------------------------------------


def _provision_shadow(ctx: Context) -> dict[str, Any]:
    from bridge import resources as bridge_resources
    from storage import resources as storage_resources

    statements = storage_resources.provision(ctx.settings, ["legacy", "shadow", "ops"])
    bridge_resources.provision(ctx.settings)  # topics, and the mirror bound to the exchange
    return {"schema_statements": statements, "mirror_queue": ctx.settings.rabbitmq.shadow_queue}


def _start_jobs(
    settings: Settings, target: str, prefix: str, topic: str | None
) -> list[dict[str, Any]]:
    """Both jobs of a target, unless they run; returns once each is RUNNING."""
    from abacus import manager
    from abacus.jobs import RunOptions
    from abacus.pipeline import KINDS, job_name

    options = RunOptions(prefix=prefix, topic=topic, resume=True)
    launched: list[tuple[str, int | None]] = []
    out: list[dict[str, Any]] = []
    for kind in KINDS:
        name = job_name(kind, target, prefix)
        state = manager.status(settings, name)
        if state is not None and state.status in ("RUNNING", "STARTING", "CREATED"):
            out.append({"job": name, "was": state.status})
            launched.append((name, state.pid))
            continue
        launched.append(manager.launch(settings, kind, target, options))
        out.append({"job": name, "was": state.status if state else "none"})
    for (name, pid), item in zip(launched, out, strict=True):
        state = manager.wait_for(
            settings, name, {"RUNNING"}, settings.cutover.handover_timeout_s, pid=pid
        )
        item["status"], item["pid"] = state.status, state.pid
    return out


def _stop_jobs(settings: Settings, names: list[str], drain: bool) -> list[dict[str, Any]]:
    """Stop the jobs that run (drained first if asked), with a savepoint."""
    from abacus import manager

    running = []
    for name in names:
        state = manager.status(settings, name)
        if state is not None and state.status in ("RUNNING", "STARTING", "CREATED"):
            running.append(name)
    if drain and running:
        manager.wait_drained(settings, running, settings.cutover.handover_timeout_s)
    out = []
    for name in running:
        final = manager.stop(settings, name, savepoint=True)
        out.append({"job": name, "status": final.status, "savepoint": final.savepoint})
    return out


def _start_shadow_jobs(ctx: Context) -> dict[str, Any]:
    return {"jobs": _start_jobs(ctx.settings, "shadow", SHADOW_PREFIX, None)}


def _start_shadow_bridge(ctx: Context) -> dict[str, Any]:
    from bridge import manage

    return {"bridge": _brief(manage.start(ctx.settings, "shadow", name=SHADOW_BRIDGE))}


def _check_shadow(ctx: Context) -> dict[str, Any]:
    return {"health": _require_healthy(ctx.settings, "shadow")}


def _stop_shadow_bridge(ctx: Context) -> dict[str, Any]:
    from bridge import manage

    return {"bridge": _brief(manage.stop(ctx.settings, SHADOW_BRIDGE))}


def _stop_shadow_jobs(ctx: Context) -> dict[str, Any]:
    return {"jobs": _stop_jobs(ctx.settings, job_names("shadow", SHADOW_PREFIX), drain=True)}


def _remove_mirror(ctx: Context) -> dict[str, Any]:
    from bridge import manage

    return {"mirror": manage.remove_mirror(ctx.settings)}


def _legacy_stops(ctx: Context) -> dict[str, Any]:
    from legacy import handover

    return {
        "legacy": handover.stop_consuming(ctx.settings, ctx.settings.cutover.handover_timeout_s)
    }


def _seed(ctx: Context) -> dict[str, Any]:
    from abacus import seeds
    from legacy import handover

    topic = live_topic(ctx.settings, ctx.epoch)
    written = seeds.write_seeds(ctx.settings, topic, handover.check_uniques(ctx.settings))
    return {"live_topic": topic, "seed_records": written}


def _start_serving_jobs(ctx: Context) -> dict[str, Any]:
    from abacus import manager

    topic, prefix = live_topic(ctx.settings, ctx.epoch), serving_prefix(ctx.epoch)
    jobs = _start_jobs(ctx.settings, "serving", prefix, topic)
    # the seeds absorbed: the jobs consumed the topic (only seeds so far) and checkpointed
    # the state that holds them
    manager.wait_drained(
        ctx.settings, job_names("serving", prefix), ctx.settings.cutover.handover_timeout_s
    )
    return {"jobs": jobs, "seeds_absorbed": True}


def _start_live_bridge(ctx: Context) -> dict[str, Any]:
    from bridge import manage

    topic = live_topic(ctx.settings, ctx.epoch)
    return {"bridge": _brief(manage.start(ctx.settings, "live", name=LIVE_BRIDGE, topic=topic))}


def _only_live_bridge(ctx: Context) -> dict[str, Any]:
    """The legacy queue's consumers are the live bridge's, and only those."""
    deadline = time.monotonic() + ctx.settings.cutover.handover_timeout_s
    while True:
        consumers = legacy_consumers(ctx.settings)
        tags = [c.get("consumer_tag") or "" for c in consumers]
        if tags and all(t.startswith(LIVE_TAG) for t in tags):
            return {"legacy_queue_consumers": tags}
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the legacy queue's consumers are {tags or 'none'}: expected only the live "
                f"bridge's ({LIVE_TAG}...)"
            )
        time.sleep(0.5)


def _stop_live_bridge(ctx: Context) -> dict[str, Any]:
    from bridge import manage

    return {"bridge": _brief(manage.stop(ctx.settings, LIVE_BRIDGE))}


def _stop_serving_jobs(ctx: Context) -> dict[str, Any]:
    names = job_names("serving", serving_prefix(ctx.epoch))
    return {"jobs": _stop_jobs(ctx.settings, names, drain=True)}


def _backfill(ctx: Context) -> dict[str, Any]:
    from abacus import seeds
    from legacy import handover

    topic = live_topic(ctx.settings, ctx.epoch)
    entries = seeds.counted_uniques(ctx.settings, topic)
    added = handover.backfill_check_uniques(ctx.settings, entries)
    return {"live_topic": topic, "customers": len(entries), "members_added": added}


def _legacy_resumes(ctx: Context) -> dict[str, Any]:
    from legacy import handover

    return {
        "legacy": handover.resume_consuming(ctx.settings, ctx.settings.cutover.handover_timeout_s)
    }


TRANSITIONS: Transitions = {
    ("legacy", "shadow"): Transition(
        "legacy",
        "shadow",
        "advance",
        (
            Step(
                "provision",
                "schema, topics, and the bounded mirror queue on the exchange",
                _provision_shadow,
            ),
            Step(
                "shadow jobs",
                "start the shadow jobs (target shadow, on the mirror topic)",
                _start_shadow_jobs,
            ),
            Step(
                "shadow bridge",
                "start the shadow bridge (mirror queue -> mirror topic)",
                _start_shadow_bridge,
            ),
            Step("check", "check that every shadow component runs", _check_shadow),
        ),
        services_gate,
    ),
    ("shadow", "legacy"): Transition(
        "shadow",
        "legacy",
        "rollback",
        (
            Step(
                "stop shadow bridge",
                "stop the shadow bridge (acks what Kafka confirmed)",
                _stop_shadow_bridge,
            ),
            Step(
                "stop shadow jobs",
                "drain the shadow jobs, stop them with a savepoint",
                _stop_shadow_jobs,
            ),
            Step("remove mirror", "delete the mirror queue and its overflow queue", _remove_mirror),
        ),
    ),
    ("shadow", "m1"): Transition(
        "shadow",
        "m1",
        "advance",
        (
            Step(
                "legacy stops",
                "legacy's workers stop consuming the legacy queue; Big Bertha flushed empty",
                _legacy_stops,
            ),
            Step(
                "seeds",
                "legacy's Check Uniques sets into the fresh live topic as seed records",
                _seed,
            ),
            Step(
                "serving jobs",
                "start the serving jobs on the live topic; wait until they absorbed the seeds",
                _start_serving_jobs,
            ),
            Step(
                "live bridge",
                "start the live bridge: legacy queue -> live topic",
                _start_live_bridge,
            ),
            Step(
                "only consumer",
                "check the live bridge is the legacy queue's only consumer",
                _only_live_bridge,
            ),
        ),
        audits_gate,
        new_epoch=True,
    ),
    ("m1", "shadow"): Transition(
        "m1",
        "shadow",
        "rollback",
        (
            Step(
                "stop live bridge",
                "stop the live bridge (acks only what Kafka confirmed)",
                _stop_live_bridge,
            ),
            Step(
                "stop serving jobs",
                "drain the serving jobs, stop them with a savepoint",
                _stop_serving_jobs,
            ),
            Step(
                "back-fill",
                "what Abacus counted unique during m1 into legacy's Check Uniques",
                _backfill,
            ),
            Step(
                "legacy resumes", "legacy's workers consume the legacy queue again", _legacy_resumes
            ),
        ),
    ),
}


# -- what runs in a stage, and whether it is healthy ---------------------------------------


def legacy_consumers(settings: Settings) -> list[dict[str, Any]]:
    from legacy import handover

    return handover.queue_consumers(settings)


def health(settings: Settings, stage: str, epoch: int) -> list[dict[str, Any]]:
    """Each component the stage runs: ok or not, and what was seen."""
    out: list[dict[str, Any]] = []
    if stage in ("shadow", "m1"):
        out.append(_bridge_health(settings, SHADOW_BRIDGE))
        out += _jobs_health(settings, job_names("shadow", SHADOW_PREFIX))
    if stage == "m1":
        out.append(_bridge_health(settings, LIVE_BRIDGE))
        out += _jobs_health(settings, job_names("serving", serving_prefix(epoch)))
    out.append(_consumers_health(settings, stage))
    return out


def _bridge_health(settings: Settings, name: str) -> dict[str, Any]:
    from bridge import manage

    s = manage.status(settings, name)
    ok = bool(s.get("running")) and bool(s.get("connected"))
    detail = f"pid {s.get('pid')}, consumer {s.get('consumer_tag')}" if ok else "not running"
    if s.get("last_error"):
        detail += f"; last error: {s['last_error']}"
    return {"component": f"{name} bridge", "ok": ok, "detail": detail}


def _jobs_health(settings: Settings, names: list[str]) -> list[dict[str, Any]]:
    from abacus import manager

    out = []
    for name in names:
        state = manager.status(settings, name)
        if state is None:
            out.append({"component": f"job {name}", "ok": False, "detail": "not started"})
            continue
        found = manager.problem(state)
        out.append(
            {
                "component": f"job {name}",
                "ok": state.status == "RUNNING" and found is None,
                "detail": found or manager.describe(state),
            }
        )
    return out


def _consumers_health(settings: Settings, stage: str) -> dict[str, Any]:
    try:
        consumers = legacy_consumers(settings)
    except Exception as exc:
        return {"component": "legacy queue consumers", "ok": False, "detail": str(exc)[:200]}
    tags = [c.get("consumer_tag") or "" for c in consumers]
    live = [t for t in tags if t.startswith(LIVE_TAG)]
    shown = [  # Celery's tags say nothing (None<n>): its connection says who
        t if t.startswith(LIVE_TAG) else f"{t} from {c.get('peer_host')}:{c.get('peer_port')}"
        for t, c in zip(tags, consumers, strict=True)
    ]
    if stage == "m1":
        ok = bool(live) and len(live) == len(tags)
        want = "only the live bridge"
    else:
        ok = not live
        want = "legacy's workers, not the live bridge"
    return {
        "component": "legacy queue consumers",
        "ok": ok,
        "detail": f"{len(tags)}: {', '.join(shown) or 'none'} (expected {want})",
    }


def _require_healthy(settings: Settings, stage: str) -> list[dict[str, Any]]:
    found = [h for h in health(settings, stage, 0) if h["component"] != "legacy queue consumers"]
    bad = [h for h in found if not h["ok"]]
    if bad:
        raise RuntimeError(
            "not healthy: " + "; ".join(f"{h['component']}: {h['detail']}" for h in bad)
        )
    return found


def _brief(doc: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "name",
        "running",
        "pid",
        "queue",
        "topic",
        "consumer_tag",
        "was_running",
        "stopped_cleanly",
        "killed",
        "totals",
    )
    return {k: doc[k] for k in keys if k in doc}
