"""The bridge's reconciliation counts: kept in memory, written to a status file every
second, served as Prometheus metrics, and read back by `abacus bridge status`.

Counts (totals since start, and per wall-clock minute for the last hour):
- consumed: messages delivered by RabbitMQ to the bridge (redeliveries included);
- produced: records Kafka confirmed on the events topic;
- dead_lettered: records Kafka confirmed on the DLQ topic (by reason too);
- acked: messages acked to RabbitMQ (each only after its record was confirmed);
- redelivered: consumed messages flagged redelivered (possible duplicates in Kafka);
- kafka_errors, reconnects;
- mirror_overflow (shadow mode): messages RabbitMQ dropped from the head of the bounded
  mirror queue while the bridge was behind or down, dead-lettered to the overflow queue
  and counted there per event date (bridge.overflow; the dates are in the ops keyspace);
  mirror_overflow_redelivered of them came again after a lost connection (at most that
  many counted twice); overflow_full: times the overflow queue itself was found full (its
  oldest may have been dropped uncounted, so the counts are a lower bound).

How to reconcile: every message that entered the queue is either acked or still in the
queue (ready or unacked); `produced + dead_lettered >= acked`, the surplus being records
of messages that were redelivered after a crash or a reconnect (at most `redelivered`),
which Abacus de-duplicates by `event_id`; the topic's end offsets grow by `produced`.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services import procs

COUNTERS = (
    "consumed",
    "produced",
    "dead_lettered",
    "acked",
    "redelivered",
    "kafka_errors",
    "reconnects",
    "mirror_overflow",
)
# counted, shown in the totals, not per minute
TOTALS = (*COUNTERS, "mirror_overflow_redelivered", "overflow_full")
MINUTES_KEPT = 60


@dataclass
class Counts:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    acked: int = 0
    redelivered: int = 0
    kafka_errors: int = 0
    reconnects: int = 0
    mirror_overflow: int = 0
    mirror_overflow_redelivered: int = 0
    overflow_full: int = 0
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TOTALS}


class Minutes:
    """Per-minute deltas of the counters, from snapshots taken at each tick."""

    def __init__(self) -> None:
        self._starts: deque[tuple[int, dict[str, int]]] = deque(maxlen=MINUTES_KEPT + 1)

    def tick(self, now_s: float, counts: Counts) -> None:
        minute = int(now_s // 60)
        if not self._starts or self._starts[-1][0] != minute:
            self._starts.append((minute, counts.snapshot()))

    def table(self, counts: Counts) -> list[dict[str, Any]]:
        """[{minute: ISO, consumed: n, ...}], oldest first, the current minute last."""
        rows: list[dict[str, Any]] = []
        starts = list(self._starts)
        current = counts.snapshot()
        for i, (minute, start) in enumerate(starts):
            end = starts[i + 1][1] if i + 1 < len(starts) else current
            row: dict[str, Any] = {
                "minute": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(minute * 60)) + "Z"
            }
            row.update({k: end[k] - start[k] for k in COUNTERS})
            rows.append(row)
        return rows[-MINUTES_KEPT:]


def status_path(data_dir: Path, mode: str) -> Path:
    return Path(data_dir) / "bridge" / f"{mode}.json"


def write_status(path: Path, doc: dict[str, Any]) -> None:
    """Atomically replace the status file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    doc["running"] = (
        not doc.get("stopped")
        and _alive(doc.get("pid"))
        and time.time() - doc.get("updated_at", 0) < 10
    )
    return doc


def _alive(pid: Any) -> bool:
    return isinstance(pid, int) and pid > 0 and procs.alive(pid)


class PrometheusCollector:
    """Exposes the live counts at scrape time (no per-message locking in the hot path)."""

    def __init__(self, counts: Counts, mode: str, in_flight: Any) -> None:
        self._counts = counts
        self._mode = mode
        self._in_flight = in_flight

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self._counts
        for name in TOTALS:
            if name == "dead_lettered":
                fam = CounterMetricFamily(
                    "abacus_bridge_dead_lettered",
                    "Records confirmed on the DLQ topic, by reason",
                    labels=["mode", "reason"],
                )
                for reason, n in sorted(c.dead_lettered_by_reason.items()):
                    fam.add_metric([self._mode, reason], n)
                yield fam
                continue
            fam = CounterMetricFamily(
                f"abacus_bridge_{name}", f"Bridge {name.replace('_', ' ')} count", labels=["mode"]
            )
            fam.add_metric([self._mode], getattr(c, name))
            yield fam
        gauge = GaugeMetricFamily(
            "abacus_bridge_in_flight_messages", "Messages consumed, not yet acked", labels=["mode"]
        )
        gauge.add_metric([self._mode], self._in_flight())
        yield gauge


def serve_metrics(
    port: int, counts: Counts, mode: str, in_flight: Any, host: str = "127.0.0.1"
) -> Any:
    """Start the Prometheus HTTP endpoint on `host:port` (a daemon thread); the server.

    Loopback by default (bridge.metrics_host): the counts are no one else's business
    unless the operator opens them up."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(counts, mode, in_flight))
    return start_http_server(port, addr=host, registry=registry)
