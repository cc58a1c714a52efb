"""The bounded mirror (pure parts): queue arguments, overflow dating and tallies, topic
configuration, the metrics bind address."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bridge import rabbit
from bridge.decode import Incoming
from bridge.kafka import TopicConfigError, topic_config
from bridge.overflow import event_date, tally
from bridge.status import Counts, PrometheusCollector, serve_metrics
from settings.model import KafkaSettings, RabbitSettings
from storage.overflow import UNDATED, Overflow
from wire.task import task_message


def celery(event: dict[str, object], redelivered: bool = False) -> Incoming:
    m = task_message(json.dumps(event), task_id="T-1")
    props = {**m.properties, "headers": {**m.headers, "x-death": [{"reason": "maxlen"}]}}
    return Incoming(m.body, props, "bridge.shadow.overflow", "", redelivered)


EVENT = {
    "event_id": "E1",
    "company_id": "C1",
    "customer_id": "U1",
    "statistic_id": "opened",
    "timestamp": 1544238000,  # 2018-12-08T03:00:00Z
}


def test_mirror_drops_its_head_into_the_overflow_queue_never_rejects() -> None:
    r = RabbitSettings(mirror_max_length=123, mirror_max_bytes=4567)
    args = rabbit.mirror_arguments(r)
    assert args["x-overflow"] == "drop-head"  # reject-publish would nack legacy's publisher
    assert (args["x-max-length"], args["x-max-length-bytes"]) == (123, 4567)
    assert args["x-dead-letter-exchange"] == ""  # the default exchange routes by queue name
    assert args["x-dead-letter-routing-key"] == r.mirror_overflow_queue
    over = rabbit.overflow_arguments(r)
    assert over["x-overflow"] == "drop-head" and "x-dead-letter-exchange" not in over
    assert over["x-max-length"] == 123


def test_event_date_is_the_local_date_of_the_event() -> None:
    assert event_date(celery(EVENT)) == "2018-12-08"
    assert event_date(celery({**EVENT, "timezone": "America/New_York"})) == "2018-12-07"


@pytest.mark.parametrize(
    "msg",
    [
        Incoming(b"\x80\x04K\x01.", {"content_type": "application/x-python-serialize"}),
        Incoming(b"{not json", {"content_type": "application/json"}),
        celery({**EVENT, "timestamp": "yesterday"}),  # invalid for the contract
        celery({**EVENT, "event_id": "\ud800"}),
        Incoming(b"[" * 100_000, {"content_type": "application/json"}),
    ],
)
def test_what_has_no_valid_event_is_undated_never_an_error(msg: Incoming) -> None:
    assert event_date(msg) == UNDATED


def test_tally_counts_per_date_and_redeliveries() -> None:
    batch = [
        celery(EVENT),
        celery(EVENT, redelivered=True),
        celery({**EVENT, "timestamp": 1512702000}),
    ]
    batch.append(Incoming(b"x", {}))
    assert tally(batch) == {
        "2018-12-08": Overflow(2, 1),
        "2017-12-08": Overflow(1, 0),
        UNDATED: Overflow(1, 0),
    }


def test_topics_carry_min_insync_replicas_and_refuse_an_impossible_one() -> None:
    assert topic_config(KafkaSettings())["min.insync.replicas"] == "1"
    conf = topic_config(KafkaSettings(replication_factor=3, min_insync_replicas=2))
    assert conf["min.insync.replicas"] == "2"
    # the settings refuse it when loaded; a copy with overrides skips validation
    impossible = KafkaSettings().model_copy(update={"min_insync_replicas": 2})
    with pytest.raises(TopicConfigError, match="min_insync_replicas"):
        topic_config(impossible)


def test_overflow_counts_are_metrics() -> None:
    counts = Counts(mirror_overflow=81, mirror_overflow_redelivered=2, overflow_full=1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(counts, "shadow", lambda: 0))
    text = generate_latest(registry).decode()
    assert 'abacus_bridge_mirror_overflow_total{mode="shadow"} 81.0' in text
    assert 'abacus_bridge_mirror_overflow_redelivered_total{mode="shadow"} 2.0' in text
    assert 'abacus_bridge_overflow_full_total{mode="shadow"} 1.0' in text
    assert counts.snapshot()["mirror_overflow"] == 81


def test_metrics_bind_loopback_unless_configured() -> None:
    server, _ = serve_metrics(0, Counts(), "shadow", lambda: 0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"abacus_bridge_consumed_total" in body
    finally:
        server.shutdown()
        server.server_close()


def test_status_table_names_the_overflow(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import _render

    totals = dict.fromkeys(Counts().snapshot(), 0)
    totals.update(mirror_overflow=81, mirror_overflow_redelivered=2, overflow_full=1)
    doc = {
        "mode": "shadow",
        "running": False,
        "totals": totals,
        "per_minute": [],
        "mirror_overflow_by_date": {"2018-12-07": {"messages": 50, "redelivered": 0}},
        "overflow_queue_depth": {"ready": 3},
    }
    _render([doc], 5)
    out = " ".join(capsys.readouterr().out.split())
    assert "mirror overflow: 81 since start (2 redelivered" in out
    assert "found full 1 times" in out
    assert "by event date: 2018-12-07 50" in out and "3 waiting in the overflow queue" in out
