"""`abacus bench bridge`: sustained RabbitMQ -> Kafka msgs/s, acks after Kafka delivery,
beside the raw consume-only rate of the same messages measured in the same run.

One publish fills two identical durable queues bound to a fresh exchange (persistent Celery
task messages of generated events). Queue A is consumed with acks only (the ceiling on this
machine: broker + client, no Kafka); queue B is consumed by the bridge, to fresh topics,
with the production producer settings. Both use the same prefetch. Printed: both rates,
their ratio, CPU per message of this process, and every parameter.
"""

from __future__ import annotations

import json
import resource
import time
import uuid
from contextlib import suppress
from typing import Any

import click

from bridge import rabbit
from bridge.amqp091 import Connection
from bridge.service import Bridge
from bridge.status import Counts
from counting.generate import GeneratorConfig, generate
from settings.model import Settings
from settings.options import output_format, seed
from wire.task import task_message
from wire.topology import declare_topology

TARGET_MSGS_S = 10_000
TARGET_RATIO = 0.5


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _publish(conn: Connection, exchange: str, routing_key: str, n: int, seed: int) -> int:
    """Publish n persistent task messages with confirms; the total body bytes."""
    conn.confirm_select()
    total = 0
    frames: list[bytes] = []
    for event in generate(GeneratorConfig(n=n, seed=seed)):
        m = task_message(json.dumps(event, ensure_ascii=False))
        total += len(m.body)
        props = {**m.properties, "headers": m.headers}
        frames.append(conn.publish_frames(m.body, exchange, routing_key, props))
        if len(frames) >= 1000:
            conn.send_raw(b"".join(frames))
            frames = []
            conn.wait_for_confirms(timeout=120)
    if frames:
        conn.send_raw(b"".join(frames))
    conn.wait_for_confirms(timeout=120)
    return total


def raw_consume(settings: Settings, queue: str, n: int, prefetch: int) -> tuple[float, float]:
    """Consume and ack n messages (multiple acks per batch): (seconds, CPU seconds)."""
    with rabbit.connect(settings.rabbitmq) as conn:
        conn.basic_qos(0, prefetch, False)
        conn.basic_consume(queue)
        got = 0
        t0 = cpu0 = 0.0
        while got < n:
            deliveries = conn.read_deliveries(5.0)
            if not deliveries:
                raise click.ClickException(f"raw consume stalled at {got}/{n} messages")
            if not got:
                t0, cpu0 = time.perf_counter(), _cpu_s()
            got += len(deliveries)
            conn.basic_ack(deliveries[-1].delivery_tag, multiple=True)
        return time.perf_counter() - t0, _cpu_s() - cpu0


def bridge_run(settings: Settings, n: int, prefetch: int) -> tuple[float, float, Counts]:
    """Run the bridge (shadow mode on the bench queue) until n acks: (s, CPU s, counts)."""
    marks: dict[str, float] = {}

    def done(counts: Counts) -> bool:
        if "t0" not in marks and counts.consumed:
            marks["t0"], marks["cpu0"] = time.perf_counter(), _cpu_s()
        if counts.acked >= n:
            marks["t1"], marks["cpu1"] = time.perf_counter(), _cpu_s()
            return True
        return False

    b = Bridge(settings, "shadow", prefetch=prefetch, should_stop=done)
    counts = b.run()
    if "t1" not in marks:
        raise click.ClickException(f"the bridge stopped at {counts.acked}/{n} acks")
    return marks["t1"] - marks["t0"], marks["cpu1"] - marks["cpu0"], counts


@click.command("bridge")
@click.option(
    "--messages",
    "n",
    type=click.IntRange(1000, 10_000_000),
    default=50_000,
    show_default=True,
    help="Messages per measurement.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(1, 65535),
    default=None,
    help="Unacked messages in flight, both runs (default: rabbitmq.prefetch).",
)
@seed(7)
@output_format("text", "json")
@click.pass_obj
def bench_bridge(settings: Settings, n: int, prefetch: int | None, seed: int, fmt: str) -> None:
    """Bridge msgs/s (acks after Kafka delivery) vs raw consume msgs/s of the same messages."""
    u = uuid.uuid4().hex[:8]
    prefetch = prefetch or settings.rabbitmq.prefetch
    rmq = settings.rabbitmq.model_copy(
        update={
            "exchange": f"bench.{u}.events",
            "legacy_queue": f"bench.{u}.raw",
            "shadow_queue": f"bench.{u}.bridge",
        }
    )
    kafka = settings.kafka.model_copy(
        update={"topic": f"bench.{u}.events", "dlq_topic": f"bench.{u}.dlq"}
    )
    s = settings.model_copy(update={"rabbitmq": rmq, "kafka": kafka})
    say = click.echo if fmt == "text" else (lambda *_a, **_k: None)
    conn = rabbit.connect(rmq)
    try:
        declare_topology(conn, rmq)  # queue A: the "legacy" queue of this exchange
        rabbit.declare_shadow_queue(conn, rmq)  # queue B: the bridge's
        say(f"publishing {n:,} persistent task messages to 2 durable queues ...")
        t = time.perf_counter()
        body_bytes = _publish(conn, rmq.exchange, rmq.routing_key, n, seed)
        publish_s = time.perf_counter() - t
        say(f"  published in {publish_s:.1f}s ({n / publish_s:,.0f} msg/s)")
        say("raw consume (acks only) ...")
        raw_s, raw_cpu = raw_consume(s, rmq.legacy_queue, n, prefetch)
        say(f"  {n / raw_s:,.0f} msg/s")
        say("bridge (decode, produce, ack after delivery) ...")
        bridge_s, bridge_cpu, counts = bridge_run(s, n, prefetch)
    finally:
        with suppress(Exception):
            conn.queue_delete(rmq.legacy_queue)
            conn.queue_delete(rmq.shadow_queue)
            conn.exchange_delete(rmq.exchange)
        conn.close()
        _delete_topics(s)
    result: dict[str, Any] = {
        "messages": n,
        "prefetch": prefetch,
        "avg_body_bytes": round(body_bytes / n),
        "bridge_msgs_s": round(n / bridge_s),
        "raw_consume_msgs_s": round(n / raw_s),
        "ratio": round(raw_s / bridge_s, 3),
        "bridge_cpu_us_per_msg": round(bridge_cpu / n * 1e6, 1),
        "raw_cpu_us_per_msg": round(raw_cpu / n * 1e6, 1),
        "produced": counts.produced,
        "dead_lettered": counts.dead_lettered,
        "acked": counts.acked,
        "target_msgs_s": TARGET_MSGS_S,
        "target_ratio": TARGET_RATIO,
    }
    result["meets_target"] = (
        result["bridge_msgs_s"] >= TARGET_MSGS_S and result["ratio"] >= TARGET_RATIO
    )
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"bridge       {result['bridge_msgs_s']:>10,} msg/s  "
        f"({result['bridge_cpu_us_per_msg']} us CPU/msg in this process, librdkafka included)\n"
        f"raw consume  {result['raw_consume_msgs_s']:>10,} msg/s  "
        f"({result['raw_cpu_us_per_msg']} us CPU/msg)\n"
        f"ratio        {result['ratio']:>10.2f}  (bridge / raw consume)\n"
        f"parameters   {n:,} messages of ~{result['avg_body_bytes']} B, prefetch {prefetch}, "
        f"acks=all idempotent producer, lz4\n"
        f"target       >= {TARGET_MSGS_S:,} msg/s and ratio >= {TARGET_RATIO}: "
        + ("met" if result["meets_target"] else "NOT met")
    )


def _delete_topics(s: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    with suppress(Exception):
        admin = AdminClient(s.kafka.client_config())
        for fut in admin.delete_topics([s.kafka.topic, s.kafka.dlq_topic]).values():
            with suppress(Exception):
                fut.result()
