"""A remote Flink cluster (`flink.jobmanager` = host:port of its REST API): jobs are submitted
and stopped with Flink's own CLI, the `flink` script that ships in the PyFlink wheel.

    flink run -m HOST:PORT -d -py abacus/runner.py -pyfs <code>.zip -- --request-file F
    flink stop -m HOST:PORT --savepointPath DIR JOB_ID      (or: flink cancel)

The request file (settings with secrets) is created 0600 and removed by the driver as soon
as it has read it. The cluster's workers need this project's Python environment at the same
path (`python.executable`), as any PyFlink deployment does. The CLI's output goes to the job's
log (`abacus job logs NAME`); a job's status is asked of the cluster's REST API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pyflink
from pyflink.common import Configuration

from abacus.failures import ERROR_LINE, failures, with_failures
from abacus.jobs import (
    RUNNING,
    JobError,
    RunOptions,
    log_path,
    request,
    savepoint_dir,
    state_file,
)
from abacus.state import JobState
from settings import Settings

_PACKAGES = ("abacus", "counting", "storage", "settings", "services")
_ROOT = Path(__file__).resolve().parent.parent
# the cluster's own settings: a job's values would override `flink run -m` (rest.address)
_CLUSTER_KEYS = ("rest.", "taskmanager.")


def flink_cli() -> Path:
    return Path(pyflink.__file__).parent / "bin" / "flink"


def flink_python_jar() -> Path:
    """The jar of PyFlink's operators, which `flink run -py` ships as the job's jar."""
    opt = Path(pyflink.__file__).parent / "opt"
    found = sorted(opt.glob("flink-python-*.jar"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one flink-python-*.jar in {opt}, found {found}")
    return found[0]


def code_archive(directory: Path) -> Path:
    """The job's code as one zip of its packages (`-pyfs`): Flink puts a zip itself on the
    workers' PYTHONPATH, but a directory's *contents*, where `storage/cassandra.py` would
    shadow the cassandra driver."""
    path = directory / "abacus-code.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in _PACKAGES:
            for source in sorted((_ROOT / package).rglob("*.py")):
                archive.write(source, source.relative_to(_ROOT).as_posix())
    return path


def cluster_configuration(conf: Configuration) -> Configuration:
    """A job's configuration as submitted by `flink run`: without the settings that belong
    to the cluster, and with the flink-python jar beside the job's jars (setting
    `pipeline.jars` replaces the list the CLI put there, and without that jar the JobManager
    cannot load the Python operators)."""
    for key in list(conf.key_set()):
        if key.startswith(_CLUSTER_KEYS):
            conf.remove_config(key)
    jars = [j for j in conf.get_string("pipeline.jars", "").split(";") if j]
    conf.set_string("pipeline.jars", ";".join([*jars, flink_python_jar().as_uri()]))
    return conf


def _reason(output: str) -> str:
    """The line that says why: the Python error of the driver, or Flink's deepest cause."""
    errors = [line.strip() for line in output.splitlines() if ERROR_LINE.match(line.strip())]
    useful = [
        e
        for e in errors
        if "Python process exits" not in e
        and "ProgramAbortException" not in e
        and "Py4JJavaError" not in e
    ]
    causes = [e for e in useful if e.startswith("Caused by: ")]
    chosen = causes[-1:] or useful[-1:] or [line for line in output.splitlines() if line][-1:]
    return chosen[0].removeprefix("Caused by: ")[:500] if chosen else "no output"


def _run(args: list[str], log: Path | None = None, timeout_s: float = 600) -> str:
    done = subprocess.run(
        [str(flink_cli()), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=_ROOT,
    )
    output = done.stdout + done.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"$ flink {' '.join(args)}\n{output}\n")
    if done.returncode != 0:
        see = f" (full output: {log})" if log is not None else ""
        raise JobError(f"flink {args[0]} failed (exit {done.returncode}): {_reason(output)}{see}")
    return output


def submit(settings: Settings, kind: str, target: str, options: RunOptions) -> JobState:
    """Submit one job to the cluster (`flink run -d`); its state once the cluster has it."""
    job = request(settings, kind, target, options)
    job["spec"]["progress_dir"] = ""  # counters live on the cluster's machines
    job["remote"] = settings.flink.jobmanager
    with tempfile.TemporaryDirectory(prefix="abacus-job-") as scratch:
        path = Path(scratch) / "request.json"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(job, f)
        output = _run(
            [
                "run",
                "-m",
                str(settings.flink.jobmanager),
                "-d",
                "-py",
                str(_ROOT / "abacus" / "runner.py"),
                "-pyclientexec",
                sys.executable,
                "-pyexec",
                sys.executable,
                "-pyfs",
                str(code_archive(Path(scratch))),
                "--",
                "--request-file",
                str(path),
            ],
            log=log_path(settings, job["spec"]["name"]),
        )
    found = re.search(r"JobID ([0-9a-f]{32})", output)
    name = job["spec"]["name"]
    state = state_file(settings, name).read()
    if state is None or found is None:
        raise JobError(f"submitted, but no job id in Flink's output: {_reason(output)}")
    state = state.replace(
        job_id=found.group(1), status="RUNNING", pid=None, remote=settings.flink.jobmanager
    )
    state_file(settings, name).write(state)
    return state


def live(state: JobState) -> JobState:
    """The job's state with its status as the cluster reports it now (GET /jobs/<id>),
    and its restarts and newest failure's reason (`failures`): LOST when the cluster does
    not know the job, UNREACHABLE when it does not answer."""
    url = f"http://{state.remote}/jobs/{state.job_id}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            found = json.load(response).get("state")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return state.replace(status="UNREACHABLE", error=f"{url}: {exc}")
        return state.replace(
            status="LOST", error=f"the cluster at {state.remote} does not know job {state.job_id}"
        )
    except (OSError, ValueError) as exc:
        return state.replace(status="UNREACHABLE", error=f"{url}: {exc}")
    state = state.replace(status=str(found)) if found else state
    try:
        return with_failures(state, failures(f"http://{state.remote}", str(state.job_id)))
    except Exception:  # best effort: its status is known, its failures not this time
        return state


def _await_end(state: JobState, expected: str, timeout_s: float = 60) -> None:
    """Wait until the cluster reports the job in its terminal state: `flink stop` returns
    once the savepoint is written, a moment before the job itself has FINISHED."""
    deadline = time.monotonic() + timeout_s
    while (now := live(state).status) != expected:
        if now in ("FAILED", "LOST") or time.monotonic() > deadline:
            raise JobError(f"job {state.name} is {now} on {state.remote}, not {expected} as asked")
        time.sleep(0.2)


def stop(settings: Settings, state: JobState, savepoint: bool) -> JobState:
    """Stop a job on the cluster with a savepoint (`flink stop`) or cancel it."""
    remote, job_id = state.remote, state.job_id
    assert remote and job_id
    if state.status not in RUNNING:
        raise JobError(f"job {state.name} is not running ({state.status} on {state.remote})")
    log = log_path(settings, state.name)
    if savepoint:
        output = _run(
            [
                "stop",
                "-m",
                remote,
                "--savepointPath",
                savepoint_dir(settings, state.name).as_uri(),
                job_id,
            ],
            log=log,
        )
        found = re.search(r"Savepoint completed\. Path: (\S+)", output)
        if found is None:
            raise JobError(
                f"job {state.name} stopped without a savepoint in Flink's output: "
                f"{_reason(output)} (see {log})"
            )
        _await_end(state, "FINISHED")
        state = state.replace(
            status="STOPPED", stopped_at=time.time(), savepoint=found.group(1).removeprefix("file:")
        )
    else:
        _run(["cancel", "-m", remote, job_id], log=log)
        _await_end(state, "CANCELED")
        state = state.replace(status="CANCELED", stopped_at=time.time())
    state_file(settings, state.name).write(state)
    return state
