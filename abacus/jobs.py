"""A job's files and its request: the layer below the job launchers and the manager.

Each job name has, under `<data_dir>/jobs/`, a state file (`abacus.state`), a log, and the
progress directories of its runs. A request is what a runner needs to run one job (the
settings with their secrets, the job spec, memory, restore point): built here, sent to a
local runner over a pipe (`abacus.local`) or to a cluster in a 0600 file (`abacus.remote`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from abacus.environment import Memory, job_jars
from abacus.pipeline import KINDS, TARGETS, JobSpec, checkpoint_root, job_name, latest_checkpoint
from abacus.state import StateFile
from services import procs
from services.paths import data_dir
from settings import Settings

RUNNING = {
    "STARTING",
    "CREATED",
    "INITIALIZING",
    "RUNNING",
    "RESTARTING",
    "STOPPING",
    "CANCELLING",
    "RECONCILING",
}

ENDED = {"FAILED", "LOST", "CANCELED"}  # a job that no longer counts (and was not stopped)


class JobError(Exception):
    """A job operation that cannot be done; the message says what to do."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    prefix: str = ""  # job names and consumer groups get it (tests isolate themselves)
    # None: the settings' value (flink.window_ms, .parallelism, .uniques_ttl_s,
    # .heap_mb, .managed_mb)
    window_ms: int | None = None
    parallelism: int | None = None
    uniques_ttl_s: int | None = None
    memory: Memory | None = None
    from_savepoint: Path | None = None
    resume: bool = True  # from the newest retained checkpoint/savepoint of the job name
    # keep the progress directories of earlier processes of the job name (a supervisor that
    # restarts a dead job keeps what they re-applied and left uncertain); False: removed
    keep_progress: bool = False
    topic: str | None = None  # the topic it counts; None: kafka.topic


def jobs_dir(settings: Settings) -> Path:
    return data_dir(settings) / "jobs"


def state_file(settings: Settings, name: str) -> StateFile:
    return StateFile(jobs_dir(settings) / f"{name}.json")


def log_path(settings: Settings, name: str) -> Path:
    return jobs_dir(settings) / f"{name}.log"


def payload(settings: Settings) -> dict[str, Any]:
    """The settings for the runner, secrets included (sent over a pipe, never stored)."""
    absolute = settings.model_copy(
        update={
            "services": settings.services.model_copy(update={"data_dir": data_dir(settings)}),
            "flink": settings.flink.model_copy(
                update={"checkpoint_dir": settings.flink.checkpoint_dir.expanduser().resolve()}
            ),
        }
    )

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value)

    return json.loads(json.dumps(absolute.model_dump(mode="python"), default=plain))


def alive(pid: int | None) -> bool:
    """Whether the process of a local job's runner is alive (False without a pid)."""
    return pid is not None and pid != 0 and procs.alive(pid)


def savepoint_dir(settings: Settings, name: str) -> Path:
    return checkpoint_root(settings, name) / "savepoints"


def restore_point(settings: Settings, name: str, options: RunOptions) -> Path | None:
    if options.from_savepoint is not None:
        path = options.from_savepoint.expanduser().resolve()
        if not (path / "_metadata").is_file() and not path.is_file():
            raise JobError(f"--from-savepoint {path}: no savepoint there (no _metadata)")
        return path
    return latest_checkpoint(settings, name) if options.resume else None


def spec(
    settings: Settings,
    kind: str,
    target: str,
    options: RunOptions,
    name: str,
    run_dir: str,
    started_ms: int,
) -> JobSpec:
    return JobSpec(
        kind=kind,  # type: ignore[arg-type]
        target=target,
        name=name,
        window_ms=options.window_ms or settings.flink.window_ms,
        dedup_ttl_s=settings.flink.dedup_ttl_s,
        uniques_ttl_s=options.uniques_ttl_s or settings.flink.uniques_ttl_s,
        progress_dir=run_dir,
        run_started_ms=started_ms,
        topic=options.topic or settings.kafka.topic,
    )


def check(kind: str, target: str) -> None:
    if kind not in KINDS:
        raise JobError(f"unknown job {kind!r}: use one of {', '.join(KINDS)}")
    if target not in TARGETS:
        raise JobError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")


def request(settings: Settings, kind: str, target: str, options: RunOptions) -> dict[str, Any]:
    name = job_name(kind, target, options.prefix)
    started_ms = int(time.time() * 1000)
    progress_root = jobs_dir(settings) / f"{name}.progress"
    if not options.keep_progress:
        shutil.rmtree(progress_root, ignore_errors=True)  # counters of earlier runs
    run_dir = progress_root / str(started_ms)
    job_spec = spec(settings, kind, target, options, name, str(run_dir), started_ms)
    restore = restore_point(settings, name, options)
    return {
        "settings": payload(settings),
        "spec": asdict(job_spec),
        "memory": asdict(
            options.memory
            or Memory(heap_mb=settings.flink.heap_mb, managed_mb=settings.flink.managed_mb)
        ),
        "parallelism": options.parallelism or settings.flink.parallelism,
        "restore_from": str(restore) if restore else None,
        "state_path": str(state_file(settings, name).path),
        "log_dir": str(jobs_dir(settings) / f"{name}.flink"),
        "jars": job_jars(settings),
    }


def logs(settings: Settings, name: str, lines: int = 200) -> str:
    path = log_path(settings, name)
    if not path.is_file():
        raise JobError(f"no log for job {name} at {path}")
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
