"""The processes of a shadow run: legacy worker and Big Bertha flusher, the bridge in shadow
mode, and both Abacus jobs (milestone 1, target shadow). Started fresh for each run, with
the run's isolated settings, and all stopped by `stop` (never the servers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from abacus import manager
from abacus.pipeline import KINDS
from bridge.status import read_status as read_bridge_status
from legacy.app import WorkerOptions
from legacy.chaos import Chaos
from legacy.status import queue_depth
from legacy.worker import WorkerProcess, start_flusher, start_worker
from services import procs
from shadow.installation import TARGET, Installation


class StartFailure(Exception):
    """A component did not come up; the message names it and its log."""


RESTART_BUDGET = 3  # restarts per component per run; one more death ends the run


@dataclass(frozen=True, slots=True)
class Restart:
    """A component that died and was started again by the run's supervisor."""

    component: str  # "bridge", "legacy worker", "Big Bertha flusher", "Abacus statistic"...
    at: float  # when the death was seen (epoch s)
    exit: str  # "signal 9 (SIGKILL)", "exit code 1", "unknown"
    reason: str  # from its log
    pid: int | None = None  # the new process

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {-code} ({signal.Signals(-code).name})"
        return f"signal {-code}"
    return f"exit code {code}"


@dataclass(frozen=True, slots=True)
class JobOptions:
    window_ms: int | None = None  # default flink.window_ms
    start_timeout_s: float = 300.0


@dataclass
class Components:
    inst: Installation
    worker: WorkerProcess | None = None
    flusher: WorkerProcess | None = None
    bridge: procs.Child | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # kind -> job name
    restarts: list[Restart] = field(default_factory=list)
    budget: int = RESTART_BUDGET
    _job_pids: dict[str, int | None] = field(default_factory=dict)  # kind -> its process
    _options: tuple[Chaos, int, JobOptions] | None = None

    def start(self, chaos: Chaos, concurrency: int, jobs: JobOptions) -> None:
        """Launch everything (the slow Flink jobs first, so that they start meanwhile) and
        return once every component consumes: legacy worker and bridge on their queues,
        both jobs RUNNING."""
        s, inst = self.inst.settings, self.inst
        options = manager.RunOptions(prefix=inst.job_prefix, window_ms=jobs.window_ms, resume=False)
        self._options = (chaos, concurrency, jobs)
        launched = []
        for kind in KINDS:
            name, pid = manager.launch(s, kind, TARGET, options)
            self.jobs[kind] = name
            self._job_pids[kind] = pid
            launched.append((name, pid))
        self.worker = self._start_worker()
        self.flusher = self._start_flusher()
        self.bridge = _start_bridge(inst)
        inst.record(pids=self.pids(), jobs=self.jobs)
        for name, pid in launched:
            try:
                manager.wait_for(s, name, {"RUNNING"}, jobs.start_timeout_s, pid=pid)
            except manager.JobError as exc:
                raise StartFailure(f"Abacus job: {exc}") from None
        self._wait_consuming(timeout_s=120.0)

    def _start_worker(self) -> WorkerProcess:
        assert self._options is not None
        chaos, concurrency, _jobs = self._options
        return start_worker(
            self.inst.settings,
            WorkerOptions(concurrency=concurrency, flush_interval_s=0, chaos=chaos),
            self.inst.log_path("legacy-worker"),
        )

    def _start_flusher(self) -> WorkerProcess:
        assert self._options is not None
        return start_flusher(
            self.inst.settings, self.inst.log_path("legacy-flusher"), 1.0, self._options[0]
        )

    def supervise(self) -> list[Restart]:
        """Start again every component that died (legacy worker, flusher, bridge, each
        Abacus job: from its latest checkpoint, its earlier progress kept), at most `budget`
        times each; the restarts done now. Raise StartFailure naming a component that died
        once more than its budget, with the reason from its log."""
        done: list[Restart] = []
        for attr, what in (
            ("worker", "legacy worker"),
            ("flusher", "Big Bertha flusher"),
            ("bridge", "bridge"),
        ):
            process: procs.Child | None = getattr(self, attr)
            if process is None or process.alive():
                continue
            code = process.process.returncode
            last = process.log_tail(1).strip()
            reason = process.failure() or (
                f"no error in its log (last line: {last})" if last else "no error in its log"
            )
            self._spend(
                what,
                f"the {what} exited ({describe_exit(code)}): {reason}; "
                f"{process.log_path}:\n{process.log_tail(15)}",
            )
            new: procs.Child
            if attr == "worker":
                new = self._start_worker()
            elif attr == "flusher":
                new = self._start_flusher()
            else:
                new = _start_bridge(self.inst)
            setattr(self, attr, new)
            done.append(Restart(what, time.time(), describe_exit(code), reason, new.process.pid))
        for kind, name in self.jobs.items():
            if (restart := self._supervise_job(kind, name)) is not None:
                done.append(restart)
        if done:
            self.restarts.extend(done)
            self.inst.record(
                pids=self.pids(), jobs=self.jobs, restarts=[r.to_dict() for r in self.restarts]
            )
        return done

    def _supervise_job(self, kind: str, name: str) -> Restart | None:
        s = self.inst.settings
        pid = self._job_pids.get(kind)
        state = manager.status(s, name)
        fresh = state is not None and (pid is None or state.pid == pid)
        if fresh and state is not None and state.status not in manager.ENDED:
            return None
        if not fresh and pid is not None and manager.alive(pid):
            return None  # started again, its runner has not written its state yet
        what = f"Abacus {kind}"
        code = _reap(pid)
        if fresh and state is not None:
            reason = manager.problem(state) or state.status
        else:
            reason = f"job {name} exited before starting"
        self._spend(what, f"Abacus {reason} (`abacus job logs {name}`)")
        assert self._options is not None
        options = manager.RunOptions(
            prefix=self.inst.job_prefix,
            window_ms=self._options[2].window_ms,
            resume=True,
            keep_progress=True,
        )
        _name, new_pid = manager.launch(s, kind, TARGET, options)
        self._job_pids[kind] = new_pid
        return Restart(what, time.time(), describe_exit(code), reason, new_pid)

    def _spend(self, what: str, failure: str) -> None:
        used = sum(1 for r in self.restarts if r.component == what)
        if used >= self.budget:
            raise StartFailure(
                f"{failure} (after {used} restart(s) of the {what}: the "
                f"restart budget is {self.budget} per component)"
            )

    def restarted(self, component: str) -> bool:
        return any(r.component == component for r in self.restarts)

    def job_states(self) -> dict[str, str]:
        """kind -> its status, "STARTING" while a restarted job's runner comes up."""
        out = {}
        for kind, name in self.jobs.items():
            state = manager.status(self.inst.settings, name)
            pid = self._job_pids.get(kind)
            fresh = state is not None and (pid is None or state.pid == pid)
            out[kind] = state.status if fresh and state is not None else "STARTING"
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in (self.worker, self.flusher, self.bridge) if p is not None]

    def _wait_consuming(self, timeout_s: float) -> None:
        from kombu import Connection

        rabbit = self.inst.settings.rabbitmq
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            with Connection(rabbit.url()) as conn:
                legacy_consumers = queue_depth(conn, rabbit.legacy_queue)[1]
            bridge = read_bridge_status(self.inst.bridge_status_path) or {}
            if legacy_consumers > 0 and bridge.get("connected"):
                return
            if time.monotonic() > deadline:
                raise StartFailure(
                    f"not consuming after {timeout_s:.0f} s: legacy worker consumers "
                    f"{legacy_consumers}, bridge connected {bool(bridge.get('connected'))}; "
                    f"logs in {self.inst.run_dir / 'logs'}"
                )
            time.sleep(0.5)

    def check_alive(self) -> None:
        """Raise StartFailure naming the first component that died, with its log's tail."""
        for what, process in (
            ("legacy worker", self.worker),
            ("Big Bertha flusher", self.flusher),
            ("bridge", self.bridge),
        ):
            if process is not None and not process.alive():
                raise StartFailure(
                    f"the {what} exited ({process.process.returncode}); "
                    f"{process.log_path}:\n{process.log_tail(15)}"
                )
        for name in self.jobs.values():
            state = manager.status(self.inst.settings, name)
            if state is not None and state.status in {"FAILED", "LOST", "CANCELED"}:
                raise StartFailure(
                    f"Abacus job {name} is {state.status}: "
                    f"{state.error or ''} (`abacus job logs {name}`)"
                )

    def stop(self) -> list[str]:
        """Stop everything this run started (best effort, each independently); what failed."""
        problems: list[str] = []
        # legacy first: a warm shutdown finishes its tasks; then the flusher's last flush
        for what, process in (
            ("legacy worker", self.worker),
            ("bridge", self.bridge),
            ("Big Bertha flusher", self.flusher),
        ):
            if process is not None:
                try:
                    process.stop(timeout_s=60)
                except OSError as exc:
                    problems.append(f"{what}: {exc}")
        for name in self.jobs.values():
            state = manager.status(self.inst.settings, name)
            if state is not None and state.status in manager.RUNNING:
                try:
                    manager.stop(self.inst.settings, name)
                except manager.JobError as exc:
                    problems.append(str(exc))
        return problems


def _reap(pid: int | None) -> int | None:
    """The exit status of a job runner this process launched (and so must reap), as a
    Popen returncode (negative: the signal); None when unknown."""
    if not pid:
        return None
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if reaped == 0:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _start_bridge(inst: Installation) -> procs.Child:
    """`python -m bridge run --mode shadow` with the run's settings in its environment."""
    log_path = Path(inst.log_path("bridge"))
    args = [
        "-m",
        "bridge",
        "run",
        "--mode",
        "shadow",
        "--status-file",
        str(inst.bridge_status_path),
    ]
    process = procs.spawn(inst.settings, args, log_path, cwd=Path(__file__).resolve().parent.parent)
    return procs.Child(process, log_path)
