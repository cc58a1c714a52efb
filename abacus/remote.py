"""A remote Flink cluster (`flink.jobmanager` = host:port of its REST API): jobs are submitted
and stopped with Flink's own CLI, the `flink` script that ships in the PyFlink wheel.

    flink run -m HOST:PORT -d -py abacus/runner.py -pyfs <packages> -- --request-file F
    flink stop -m HOST:PORT --savepointPath DIR JOB_ID      (or: flink cancel)

The request file (settings with secrets) is created 0600 and removed by the driver as soon
as it has read it. The cluster's workers need this project's Python environment at the same
path (`python.executable`), as any PyFlink deployment does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyflink

from abacus.state import JobState
from settings import Settings

_PACKAGES = ("abacus", "counting", "storage", "settings", "services")
_ROOT = Path(__file__).resolve().parent.parent


def flink_cli() -> Path:
    return Path(pyflink.__file__).parent / "bin" / "flink"


def _run(args: list[str], timeout_s: float = 600) -> str:
    done = subprocess.run([str(flink_cli()), *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False, cwd=_ROOT)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        from abacus.manager import JobError

        tail = " | ".join(line for line in output.splitlines()[-5:] if line.strip())
        raise JobError(f"flink {args[0]} failed (exit {done.returncode}): {tail[:500]}")
    return output


def submit(settings: Settings, kind: str, target: str, options: object) -> JobState:
    from abacus.manager import _request, state_file

    request = _request(settings, kind, target, options)  # type: ignore[arg-type]
    request["spec"]["progress_dir"] = ""  # counters live on the cluster's machines
    request["remote"] = settings.flink.jobmanager
    fd, path = tempfile.mkstemp(prefix="abacus-job-", suffix=".json")
    with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
        json.dump(request, f)
    try:
        output = _run(["run", "-m", str(settings.flink.jobmanager), "-d",
                       "-py", str(_ROOT / "abacus" / "runner.py"),
                       "-pyclientexec", sys.executable, "-pyexec", sys.executable,
                       "-pyfs", ",".join(str(_ROOT / p) for p in _PACKAGES),
                       "--", "--request-file", path])
    finally:
        Path(path).unlink(missing_ok=True)
    found = re.search(r"JobID ([0-9a-f]{32})", output)
    name = request["spec"]["name"]
    state = state_file(settings, name).read()
    if state is None or found is None:
        from abacus.manager import JobError

        raise JobError(f"submitted, but no job id in Flink's output: {output[-300:]}")
    state = state.replace(job_id=found.group(1), status="RUNNING", pid=None,
                          remote=settings.flink.jobmanager)
    state_file(settings, name).write(state)
    return state


def stop(settings: Settings, state: JobState, savepoint: bool) -> JobState:
    from abacus.manager import state_file
    from abacus.runner import savepoint_dir

    assert state.job_id and state.remote
    if savepoint:
        output = _run(["stop", "-m", state.remote, "--savepointPath",
                       savepoint_dir(settings, state.name).as_uri(), state.job_id])
        found = re.search(r"Savepoint completed\. Path: (\S+)", output)
        state = state.replace(status="STOPPED", stopped_at=time.time(),
                              savepoint=found.group(1).removeprefix("file:") if found else None)
    else:
        _run(["cancel", "-m", state.remote, state.job_id])
        state = state.replace(status="CANCELED", stopped_at=time.time())
    state_file(settings, state.name).write(state)
    return state
