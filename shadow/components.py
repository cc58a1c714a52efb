"""The processes of a shadow run: legacy worker and Big Bertha flusher, the bridge in shadow
mode, and both Abacus jobs (milestone 1, target shadow). Started fresh for each run, with
the run's isolated settings, and all stopped by `stop` (never the servers).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from abacus import manager
from abacus.pipeline import KINDS
from bridge.status import read_status as read_bridge_status
from legacy.app import WorkerOptions
from legacy.chaos import Chaos
from legacy.status import queue_depth
from legacy.worker import WorkerProcess, child_env, start_flusher, start_worker
from shadow.installation import TARGET, Installation


class StartFailure(Exception):
    """A component did not come up; the message names it and its log."""


@dataclass(frozen=True, slots=True)
class JobOptions:
    window_ms: int | None = None  # default flink.window_ms
    start_timeout_s: float = 300.0


@dataclass
class Components:
    inst: Installation
    worker: WorkerProcess | None = None
    flusher: WorkerProcess | None = None
    bridge: WorkerProcess | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # kind -> job name

    def start(self, chaos: Chaos, concurrency: int, jobs: JobOptions) -> None:
        """Launch everything (the slow Flink jobs first, so that they start meanwhile) and
        return once every component consumes: legacy worker and bridge on their queues,
        both jobs RUNNING."""
        s, inst = self.inst.settings, self.inst
        options = manager.RunOptions(prefix=inst.job_prefix, window_ms=jobs.window_ms,
                                     resume=False)
        launched = []
        for kind in KINDS:
            name, pid = manager.launch(s, kind, TARGET, options)
            self.jobs[kind] = name
            launched.append((name, pid))
        self.worker = start_worker(
            s, WorkerOptions(concurrency=concurrency, flush_interval_s=0, chaos=chaos),
            inst.log_path("legacy-worker"))
        self.flusher = start_flusher(s, inst.log_path("legacy-flusher"), 1.0, chaos)
        self.bridge = _start_bridge(inst)
        inst.record(pids=self.pids(), jobs=self.jobs)
        for name, pid in launched:
            try:
                manager.wait_for(s, name, {"RUNNING"}, jobs.start_timeout_s, pid=pid)
            except manager.JobError as exc:
                raise StartFailure(f"Abacus job: {exc}") from None
        self._wait_consuming(timeout_s=120.0)

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
                    f"logs in {self.inst.run_dir / 'logs'}")
            time.sleep(0.5)

    def check_alive(self) -> None:
        """Raise StartFailure naming the first component that died, with its log's tail."""
        for what, process in (("legacy worker", self.worker),
                              ("Big Bertha flusher", self.flusher), ("bridge", self.bridge)):
            if process is not None and not process.alive():
                raise StartFailure(f"the {what} exited ({process.process.returncode}); "
                                   f"{process.log_path}:\n{process.log_tail(15)}")
        for name in self.jobs.values():
            state = manager.status(self.inst.settings, name)
            if state is not None and state.status in {"FAILED", "LOST", "CANCELED"}:
                raise StartFailure(f"Abacus job {name} is {state.status}: "
                                   f"{state.error or ''} (`abacus job logs {name}`)")

    def stop(self) -> list[str]:
        """Stop everything this run started (best effort, each independently); what failed."""
        problems: list[str] = []
        # legacy first: a warm shutdown finishes its tasks; then the flusher's last flush
        for what, process in (("legacy worker", self.worker), ("bridge", self.bridge),
                              ("Big Bertha flusher", self.flusher)):
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


def _start_bridge(inst: Installation) -> WorkerProcess:
    """`python -m bridge run --mode shadow` with the run's settings in its environment."""
    env = child_env(inst.settings)
    log_path = inst.log_path("bridge")
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(Path(log_path).open("ab"))
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--mode", "shadow",
             "--status-file", str(inst.bridge_status_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent)
    return WorkerProcess(process, log_path)
