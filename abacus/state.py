"""A job's state file, `<data_dir>/jobs/<name>.json`: what `abacus job status` reports."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class JobState:
    name: str
    kind: str
    target: str
    pid: int | None
    status: str
    started_at: float
    job_id: str | None = None
    restored_from: str | None = None
    savepoint: str | None = None
    stopped_at: float | None = None
    error: str | None = None
    progress_dir: str = ""
    group_id: str = ""
    topic: str = ""
    run_started_ms: int = 0
    remote: str | None = None  # host:port of the remote cluster that runs it
    rest_port: int | None = None  # a local job's MiniCluster REST API (127.0.0.1)
    metrics_port: int | None = None  # a local job's Prometheus reporter (127.0.0.1)
    restarts: int = 0  # how often Flink restarted the job (its numRestarts)
    failure_times_ms: list[int] = field(default_factory=list)  # its recent failures, newest last
    spec: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> JobState:
        return dataclasses.replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def start_line(name: str, pid: int | None) -> str:
    """What a job's runner logs first: the manager reads a lost job's reason after it."""
    return f"job {name} starting (pid {pid})"


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, state: JobState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_record(), indent=1))
        os.replace(tmp, self.path)

    def read(self) -> JobState | None:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        known = {f.name for f in dataclasses.fields(JobState)}
        return JobState(**{k: v for k, v in data.items() if k in known})
