"""Local jobs: each a background `python -m abacus.runner` process on its own MiniCluster.

The process has its own session, so it outlives the command that started it; it reads its
request on stdin (secrets never reach argv or the disk), logs to the job's log and keeps
its state file up to date (`abacus.jobs`). Stopped by a signal: SIGTERM cancels (checkpoints
retained), SIGUSR1 stops with a savepoint. Beside `abacus.remote`, which does the same on a
remote cluster; `abacus.manager` chooses between them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from abacus.jobs import RUNNING, JobError, alive, log_path
from abacus.state import JobState
from settings import Settings

_ROOT = Path(__file__).resolve().parent.parent


def launch(settings: Settings, name: str, request: dict[str, Any]) -> int:
    """Start the runner of job `name` on `request`; its pid, without waiting for it to run."""
    path = log_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "abacus.runner"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=_ROOT,
        )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    return proc.pid


def run_foreground(request: dict[str, Any]) -> int:
    """Run the job in this process until it ends or is interrupted; its exit code."""
    from abacus.runner import run  # PyFlink and its JVM: only when a job runs here

    return run(request, foreground=True)


def stop(state: JobState, savepoint: bool, timeout_s: float) -> None:
    """Signal the job's runner and wait until it has exited."""
    name = state.name
    if state.status not in RUNNING:
        raise JobError(f"job {name} is not running ({state.status})")
    assert state.pid is not None
    os.kill(state.pid, signal.SIGUSR1 if savepoint else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(state.pid):
        if time.monotonic() > deadline:
            raise JobError(f"job {name} (pid {state.pid}) did not stop in {timeout_s:.0f}s")
        time.sleep(0.3)
