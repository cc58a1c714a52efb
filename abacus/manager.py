"""Start, stop, inspect the jobs: the Python API that `abacus job` and `abacus shadow run` use.

    start_jobs(settings, "shadow")      # both jobs, background processes
    drained(settings, "statistic")      # lag 0 and nothing pending in a window
    stop_jobs(settings, "shadow", savepoint=True)

A local job is a background `python -m abacus.runner` process (`abacus.local`: its own
session, so it outlives the command that started it); with `flink.jobmanager` set, jobs are
submitted to that cluster instead (`abacus.remote`). Either way a job has a state file and a
log under `<data_dir>/jobs/` (`abacus.jobs`, below both launchers and this module).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from abacus import local, progress
from abacus.failures import error_line
from abacus.jobs import (
    ENDED,
    RUNNING,
    JobError,
    RunOptions,
    alive,
    check,
    jobs_dir,
    log_path,
    logs,
    request,
    restore_point,
    state_file,
)
from abacus.lag import consumer_lag
from abacus.pipeline import KINDS, job_name
from abacus.state import JobState, start_line
from settings import Settings

__all__ = [
    "ENDED",
    "RUNNING",
    "Drain",
    "JobError",
    "RunOptions",
    "alive",
    "describe",
    "drain_status",
    "drained",
    "jobs_dir",
    "launch",
    "log_path",
    "logs",
    "metrics_url",
    "problem",
    "recent_restarts",
    "restore_point",
    "run_foreground",
    "start",
    "start_jobs",
    "state_file",
    "status",
    "statuses",
    "stop",
    "stop_jobs",
    "wait_drained",
    "wait_for",
    "web_ui",
]

# restart-looping: this many restarts within this window. Not fewer: an outage of a server
# the job needs (a Cassandra restart) costs a restart or two that end in recovery, and a
# shadow run must not stop on that; more is a job that keeps failing (flink.restart_attempts
# then ends it FAILED, but its count starts again after flink.restart_reset_s)
LOOP_RESTARTS, LOOP_WINDOW_S = 3, 60.0


def status(settings: Settings, name: str) -> JobState | None:
    """The job's state, with a status of LOST when its process died without saying so."""
    state = state_file(settings, name).read()
    if state is None:
        return None
    if state.remote is None and state.status in RUNNING and not alive(state.pid):
        state = state.replace(status="LOST", error=_last_error(settings, state) or state.error)
    if state.remote is not None and state.status in RUNNING:
        from abacus import remote

        state = remote.live(state)  # as its cluster reports it
    return state


def recent_restarts(
    state: JobState, window_s: float = LOOP_WINDOW_S, now_s: float | None = None
) -> int:
    """How many times the job failed (and so restarted) within the last `window_s`."""
    since_ms = ((time.time() if now_s is None else now_s) - window_s) * 1000
    return sum(1 for t in state.failure_times_ms if t >= since_ms)


def problem(state: JobState, now_s: float | None = None) -> str | None:
    """Why a job is not counting, in one line, or None: it ended (FAILED, LOST, CANCELED)
    or is restart-looping (LOOP_RESTARTS restarts within LOOP_WINDOW_S); with the reason from
    its log (the newest failure's root exception)."""
    reason = f": {state.error}" if state.error else ""
    if state.status in ENDED:
        after = f" after {state.restarts} restart(s)" if state.restarts else ""
        return f"job {state.name} is {state.status}{after}{reason}"
    if state.status in RUNNING:
        n = recent_restarts(state, now_s=now_s)
        if n >= LOOP_RESTARTS:
            return (
                f"job {state.name} is restart-looping ({state.status}, {n} restarts in "
                f"the last minute){reason}"
            )
    return None


def web_ui(state: JobState) -> str | None:
    """The Flink web UI (and REST API) of the job's cluster while the job runs: a local
    job's MiniCluster serves it on 127.0.0.1 at a free port (`rest_port` of its state), a
    remote job's is its cluster's jobmanager; None otherwise."""
    if state.status not in RUNNING:
        return None
    if state.remote is not None:
        return f"http://{state.remote}/"
    return f"http://127.0.0.1:{state.rest_port}/" if state.rest_port else None


def metrics_url(state: JobState) -> str | None:
    """Where a running local job serves its metrics for Prometheus (its Flink reporter on
    127.0.0.1 at `metrics_port`, flink.metrics_port); None otherwise (a remote job's
    metrics are its cluster's reporter's)."""
    if state.status not in RUNNING or state.remote is not None or not state.metrics_port:
        return None
    return f"http://127.0.0.1:{state.metrics_port}/metrics"


def describe(state: JobState, now_s: float | None = None) -> str:
    """The status column of `job status`: FAILED, or RESTARTING (restart-looping: N
    restarts in the last minute), or RUNNING (1 restart in the last minute)..."""
    n = recent_restarts(state, now_s=now_s) if state.status in RUNNING else 0
    if n >= LOOP_RESTARTS:
        return f"{state.status} (restart-looping: {n} restarts in the last minute)"
    if n:
        return f"{state.status} ({n} restart{'s' if n > 1 else ''} in the last minute)"
    return state.status


def _last_error(settings: Settings, state: JobState) -> str | None:
    """The root exception line its runner's log holds since that runner started (a process
    that died without writing its state: killed, or its JVM crashed); None without one."""
    try:
        tail = logs(settings, state.name, lines=400)
    except JobError:
        return None
    marker = tail.rfind(start_line(state.name, state.pid))
    return error_line(tail[marker:]) if marker >= 0 else None


def statuses(settings: Settings) -> list[JobState]:
    found = []
    for path in sorted(jobs_dir(settings).glob("*.json")):
        state = status(settings, path.stem)
        if state is not None:
            found.append(state)
    return found


def launch(
    settings: Settings, kind: str, target: str, options: RunOptions | None = None
) -> tuple[str, int | None]:
    """Start one job's process and return (name, pid) without waiting for it to run."""
    options = options or RunOptions()
    check(kind, target)
    name = job_name(kind, target, options.prefix)
    current = status(settings, name)
    if current is not None and current.status in RUNNING:
        raise JobError(
            f"job {name} is already {current.status} (pid {current.pid}): "
            f"`abacus job stop {name}` first"
        )
    if settings.flink.jobmanager:
        from abacus import remote  # PyFlink: only when a cluster is configured

        remote.submit(settings, kind, target, options)
        return name, None
    return name, local.launch(settings, name, request(settings, kind, target, options))


def start(
    settings: Settings,
    kind: str,
    target: str,
    options: RunOptions | None = None,
    timeout_s: float = 300,
) -> JobState:
    """Start one job in the background; returns once it is RUNNING (or raises JobError)."""
    name, pid = launch(settings, kind, target, options)
    return wait_for(settings, name, {"RUNNING"}, timeout_s, pid=pid)


def run_foreground(
    settings: Settings, kind: str, target: str, options: RunOptions | None = None
) -> int:
    options = options or RunOptions()
    check(kind, target)
    if settings.flink.jobmanager:
        raise JobError(
            f"--foreground runs a local MiniCluster, but flink.jobmanager is "
            f"{settings.flink.jobmanager}: drop --foreground to submit to it"
        )
    return local.run_foreground(request(settings, kind, target, options))


def wait_for(
    settings: Settings, name: str, wanted: set[str], timeout_s: float, pid: int | None = None
) -> JobState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(settings, name)
        fresh = state is not None and (pid is None or state.pid == pid)
        if fresh and state is not None and state.status in wanted:
            return state
        if fresh and state is not None and state.status in ENDED:
            raise JobError(f"{problem(state)} (`abacus job logs {name}`)")
        if pid is not None and not alive(pid) and not fresh:
            raise JobError(f"job {name} exited before starting: `abacus job logs {name}`")
        if time.monotonic() > deadline:
            raise JobError(
                f"job {name} not {'/'.join(sorted(wanted))} after {timeout_s:.0f}s "
                f"(now {state.status if state else 'unknown'})"
            )
        time.sleep(0.5)


def stop(
    settings: Settings, name: str, savepoint: bool = False, timeout_s: float = 180
) -> JobState:
    """Cancel a job (checkpoints retained) or stop it with a savepoint; waits until done."""
    state = status(settings, name)
    if state is None:
        raise JobError(f"no job named {name}: see `abacus job status`")
    if state.remote is not None:
        from abacus import remote

        return remote.stop(settings, state, savepoint)
    local.stop(state, savepoint, timeout_s)
    final = status(settings, name)
    assert final is not None
    if savepoint and not final.savepoint:
        raise JobError(
            f"job {name} stopped without a savepoint ({final.status}): `abacus job logs {name}`"
        )
    return final


def start_jobs(
    settings: Settings, target: str, options: RunOptions | None = None, timeout_s: float = 300
) -> list[JobState]:
    """Both jobs (statistic and customer) for a target, each its own process and group;
    they start side by side and this returns when both run."""
    launched = [launch(settings, kind, target, options) for kind in KINDS]
    return [wait_for(settings, name, {"RUNNING"}, timeout_s, pid=pid) for name, pid in launched]


def stop_jobs(
    settings: Settings, target: str, prefix: str = "", savepoint: bool = False
) -> list[JobState]:
    out = []
    for kind in KINDS:
        name = job_name(kind, target, prefix)
        state = status(settings, name)
        if state is not None and state.status in RUNNING:
            out.append(stop(settings, name, savepoint))
    return out


@dataclass(frozen=True, slots=True)
class Drain:
    name: str
    lag: int
    fanned: int | None
    written: int | None

    @property
    def drained(self) -> bool:
        return self.lag == 0 and (self.fanned is None or self.fanned == self.written)


def drain_status(settings: Settings, name: str) -> Drain:
    """Consumer lag (committed on checkpoint) and increments pending in the windows."""
    state = status(settings, name)
    if state is None:
        raise JobError(f"no job named {name}: see `abacus job status`")
    lag = consumer_lag(settings.kafka, state.group_id, state.topic).lag
    if not state.progress_dir:
        return Drain(name, lag, None, None)
    counts = progress.read(Path(state.progress_dir))
    return Drain(name, lag, counts.fanned, counts.written)


def drained(settings: Settings, name: str) -> bool:
    """True when the job consumed and checkpointed everything on its topic, and every count
    increment that entered a window has been written (no pending window output)."""
    return drain_status(settings, name).drained


def wait_drained(settings: Settings, names: list[str], timeout_s: float = 300) -> None:
    """Return once every job drained; JobError after `timeout_s`, or at once when a job
    ended or is restart-looping (it would not drain)."""
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        for name in pending:
            state = status(settings, name)
            found = problem(state) if state is not None else None
            if found is not None:
                raise JobError(f"{found} (`abacus job logs {name}`)")
        pending = [n for n in pending if not drained(settings, n)]
        if not pending:
            return
        if time.monotonic() > deadline:
            details = [drain_status(settings, n) for n in pending]
            raise JobError(f"not drained after {timeout_s:.0f}s: {details}")
        time.sleep(0.5)
