"""What each stage of a shadow run is doing, sampled; and whether every pipeline drained.

Drained is detected, never slept:
- legacy: its queue empty, no task unacked (asked of the workers), Big Bertha empty
  (`legacy.status.read_status(...).drained`), and every published message processed;
- bridge: its mirror queue empty, nothing in flight, every consumed message produced or
  dead-lettered and acked, and at least every published message consumed;
- Abacus: for each job, consumer lag 0 on the run's topic and every count increment that
  entered a window written (`abacus.manager.drain_status`).
Each must hold on two consecutive samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from abacus import manager
from bridge import rabbit
from bridge.kafka import topic_end_offsets
from bridge.status import read_status as read_bridge_status
from legacy.status import read_status as read_legacy_status
from legacy.worker import WorkerProcess
from shadow.installation import Installation

PIPELINES = ("legacy", "abacus")


@dataclass
class Sample:
    at: float
    published: int = 0
    legacy: dict[str, Any] = field(default_factory=dict)
    bridge: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    dlq_records: int | None = None  # Kafka DLQ topic: bridge and both jobs' dead letters
    errors: list[str] = field(default_factory=list)

    @property
    def legacy_done(self) -> int:
        """Task executions finished by legacy (counted or dead-lettered)."""
        stats = self.legacy.get("stats", {})
        return stats.get("processed", 0) + stats.get("dead_lettered", 0)

    @property
    def written(self) -> int:
        """Count increments both Abacus jobs have written."""
        return sum(j.get("written") or 0 for j in self.jobs.values())


def sample(
    inst: Installation, jobs: dict[str, str], published: int, ask_workers: bool = False
) -> Sample:
    """One reading of every stage; a server that does not answer is an error in the sample,
    not an exception."""
    s = inst.settings
    out = Sample(time.time(), published)
    try:
        out.legacy = read_legacy_status(s, ask_workers=ask_workers).to_dict()
    except Exception as exc:
        out.errors.append(f"legacy status: {type(exc).__name__}: {exc}")
    doc = read_bridge_status(inst.bridge_status_path) or {}
    depth = rabbit.queue_depth(s.rabbitmq, s.rabbitmq.shadow_queue)
    out.bridge = {
        "running": bool(doc.get("running")),
        "in_flight": doc.get("in_flight", 0),
        **doc.get("totals", {}),
        "ready": None if depth is None else depth[0],
    }
    for kind, name in jobs.items():
        try:
            state = manager.status(s, name)
            drain = manager.drain_status(s, name)
            out.jobs[kind] = {
                "status": state.status if state else "unknown",
                "lag": drain.lag,
                "fanned": drain.fanned,
                "written": drain.written,
            }
        except Exception as exc:
            out.errors.append(f"job {name}: {type(exc).__name__}: {exc}")
    out.dlq_records = topic_end_offsets(s.kafka, s.kafka.dlq_topic, timeout_s=3.0)
    return out


def job_problem(inst: Installation, jobs: dict[str, str]) -> str | None:
    """The first Abacus job of the run that failed, was lost, or is restart-looping, with
    the reason from its log (`abacus.manager.problem`); None while all count. Checked on
    every sample, so the run stops at once instead of waiting for its drain timeout."""
    for name in jobs.values():
        state = manager.status(inst.settings, name)
        found = manager.problem(state) if state is not None else None
        if found is not None:
            return f"Abacus {found} (`abacus job logs {name}`)"
    return None


def legacy_problem(worker: WorkerProcess | None) -> str | None:
    """The legacy worker died (a message py-amqp cannot decode kills it before any task
    code runs: a legacy flaw), with the reason from its log; None while it runs."""
    if worker is None or worker.alive():
        return None
    reason = worker.failure() or f"exit code {worker.process.returncode}"
    return f"legacy worker died: {reason} (log: {worker.log_path})"


def legacy_drained(x: Sample, published: int) -> bool:
    return bool(x.legacy.get("drained")) and x.legacy_done >= published


def bridge_drained(x: Sample, published: int, restarted: bool = False) -> bool:
    """A restarted bridge's totals count since its start: what the dead one consumed and
    acked is gone from the queue (what it had not acked was delivered again), so the mirror
    queue empty and the new bridge balanced is the test, not consumed >= published."""
    b = x.bridge
    consumed = b.get("consumed", 0)
    return (
        b.get("ready") == 0
        and b.get("in_flight") == 0
        and (restarted or consumed >= published)
        and b.get("produced", 0) + b.get("dead_lettered", 0) == consumed
        and b.get("acked", 0) == consumed
    )


def abacus_drained(x: Sample) -> bool:
    return bool(x.jobs) and all(
        j.get("status") == "RUNNING"
        and j["lag"] == 0
        and (j["fanned"] is None or j["fanned"] == j["written"])
        for j in x.jobs.values()
    )


@dataclass
class Finish:
    """When each pipeline's work last moved: its completion time once it has drained."""

    last_change: dict[str, float] = field(default_factory=dict)
    _values: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def update(self, x: Sample) -> None:
        stats = x.legacy.get("stats", {})
        values = {
            "legacy": (x.legacy_done, stats.get("flushed_keys", 0)),
            "abacus": (x.written,),
        }
        for name, value in values.items():
            if self._values.get(name) != value:
                self._values[name] = value
                self.last_change[name] = x.at
