"""One shadow run's own installation: names derived from its run id, created and removed.

Every run is isolated (fresh per run, so repeated demo runs never mix their counts): its
Cassandra keyspaces (`<prefix><run_id>_abacus_legacy|shadow|ops`), Kafka topics
(`<topic>.<run_id>`), RabbitMQ exchange and queues (`<name>.<run_id>`), Redis prefix
(`<prefix>shadow:<run_id>:`) and Abacus job names / consumer groups (`<run_id>-statistic`).
What a run created is recorded in `<data_dir>/shadow/<run_id>/run.json`, so that a later run
can remove it exactly (`prune`): the last few runs are kept for inspection, older ones are
dropped whole (keyspaces, topics, queues, Redis keys, job files and checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import storage
from services.paths import data_dir
from settings import Settings
from storage import resources as storage_resources

RABBIT_NAMES = (
    "exchange",
    "legacy_queue",
    "shadow_queue",
    "mirror_overflow_queue",
    "dead_letter_queue",
)
KEYSPACES = ("legacy", "shadow", storage.OPS)  # the stores a shadow run writes and audits
TARGET = "shadow"  # the Abacus jobs write the shadow store


def new_run_id() -> str:
    """Sortable by start time, short, and a valid part of a keyspace name."""
    return "r" + time.strftime("%y%m%d%H%M%S", time.gmtime()) + uuid.uuid4().hex[:4]


def runs_dir(settings: Settings) -> Path:
    return data_dir(settings) / "shadow"


def overrides(settings: Settings, run_id: str) -> dict[str, dict[str, str]]:
    """The settings a run changes: every name it creates carries its run id."""
    k, c, r, rd = settings.kafka, settings.cassandra, settings.rabbitmq, settings.redis
    return {
        "kafka": {"topic": f"{k.topic}.{run_id}", "dlq_topic": f"{k.dlq_topic}.{run_id}"},
        "cassandra": {"keyspace_prefix": f"{c.keyspace_prefix}{run_id}_"},
        "rabbitmq": {name: f"{getattr(r, name)}.{run_id}" for name in RABBIT_NAMES},
        "redis": {"prefix": f"{rd.prefix}shadow:{run_id}:"},
    }


def apply(settings: Settings, changes: dict[str, dict[str, str]]) -> Settings:
    return settings.model_copy(
        update={
            section: getattr(settings, section).model_copy(update=values)
            for section, values in changes.items()
        }
    )


@dataclass(frozen=True)
class Installation:
    run_id: str
    settings: Settings  # the isolated settings: every component of the run gets these
    run_dir: Path
    changes: dict[str, dict[str, str]]  # what `overrides` changed (recorded for prune)

    @property
    def job_prefix(self) -> str:
        return f"{self.run_id}-"

    @property
    def events_path(self) -> Path:
        """The run's event log, exactly what was published: the truth of its audits."""
        return self.run_dir / "events.jsonl"

    @property
    def bridge_status_path(self) -> Path:
        return self.run_dir / "bridge.json"

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def record(self, **extra: Any) -> None:
        """Write run.json: what this run created (for prune) and its processes."""
        path = self.run_dir / "run.json"
        doc = _read_json(path) or {
            "run_id": self.run_id,
            "overrides": self.changes,
            "owner_pid": os.getpid(),
        }
        doc.update(extra)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)


def create(settings: Settings, run_id: str | None = None) -> Installation:
    """A new run's installation (names only; `prepare` creates the broker state)."""
    run_id = run_id or new_run_id()
    changes = overrides(settings, run_id)
    run_dir = runs_dir(settings) / run_id
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    inst = Installation(run_id, apply(settings, changes), run_dir, changes)
    inst.record(started_at=time.time(), base=_base(settings))
    return inst


def prepare(inst: Installation) -> None:
    """What each package of the run owns, provisioned: keyspaces and tables (storage),
    RabbitMQ exchange and queues (legacy), Kafka topics and the bridge's mirror queue
    (bridge: declared now, so nothing published before the bridge connects is missed)."""
    from bridge import resources as bridge_resources
    from legacy import resources as legacy_resources

    settings = inst.settings
    storage_resources.provision(settings, KEYSPACES)
    legacy_resources.provision(settings)
    bridge_resources.provision(settings)


def prune(settings: Settings, keep: int) -> list[str]:
    """Among the earlier runs of this installation (same base names) that are not running
    any more: stop what a killed one left running, and remove all but the newest `keep`.
    Returns the run ids removed. A run still running (its `abacus shadow run` process is
    alive, e.g. a concurrent test) is never touched."""
    root = runs_dir(settings)
    base = _base(settings)
    finished = []
    for path in sorted(root.glob("r*")):
        doc = _read_json(path / "run.json")
        if doc is None or doc.get("base") != base or _alive(doc.get("owner_pid"), "shadow"):
            continue
        if "stopped_at" not in doc:
            _stop_leftovers(settings, path.name, doc)
        finished.append((path, doc))
    doomed = finished[: max(0, len(finished) - keep)]
    for path, doc in doomed:
        remove(settings, path.name, doc["overrides"])
        shutil.rmtree(path, ignore_errors=True)
    return [path.name for path, _ in doomed]


def _base(settings: Settings) -> str:
    """What the run ids are appended to: runs of another base are another installation's."""
    return f"{settings.cassandra.keyspace_prefix}|{settings.kafka.topic}|{settings.redis.prefix}"


def _stop_leftovers(settings: Settings, run_id: str, doc: dict[str, Any]) -> None:
    """A run killed without its teardown: stop its processes and jobs."""
    from abacus import manager

    for pid in doc.get("pids", []):
        if _alive(pid, run_id, environ=True):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(manager.JobError):
        manager.stop_jobs(apply(settings, doc["overrides"]), TARGET, f"{run_id}-")


def _alive(pid: Any, marker: str, environ: bool = False) -> bool:
    """A live process whose command line (or environment) holds `marker`: not a pid the
    system recycled for something else."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        data = Path(f"/proc/{pid}/{'environ' if environ else 'cmdline'}").read_bytes()
    except OSError:
        return False
    return marker.encode() in data


def remove(settings: Settings, run_id: str, changes: dict[str, dict[str, str]]) -> None:
    """Drop everything a run created, each package what it owns (best effort: what is
    already gone is fine)."""
    from abacus import resources as abacus_resources
    from bridge import resources as bridge_resources
    from legacy import resources as legacy_resources

    s = apply(settings, changes)
    storage_resources.teardown(s, KEYSPACES)
    bridge_resources.teardown(s)
    legacy_resources.teardown(s)
    abacus_resources.teardown(s, f"{run_id}-", TARGET)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc
