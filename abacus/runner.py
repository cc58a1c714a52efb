"""The process that runs one job on a local MiniCluster: `python -m abacus.runner`.

It reads its request (settings with secrets, the job spec, memory, restore point) as JSON on
stdin, never from argv or a file, so no secret reaches `ps` or the disk. It builds the job,
`execute_async()`s it, and keeps `<data_dir>/jobs/<name>.json` up to date. Signals:
SIGTERM cancels (checkpoints are retained on cancellation), SIGUSR1 stops with a savepoint.

With `flink.metrics_port` set (0: a free port), the MiniCluster serves its metrics for
Prometheus on 127.0.0.1 (`abacus.environment.reporter_configuration`); once the job runs
and the endpoint answers, it is announced to the local Prometheus (`services.targets`,
kind `flink`, label `abacus_job`) until this process ends.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from abacus.environment import Memory, configuration, local_environment, prepare_process
from abacus.failures import failures, root_cause, with_failures
from abacus.jobs import savepoint_dir
from abacus.pipeline import JobSpec, build, checkpoint_root, job_topic
from abacus.remote import cluster_configuration
from abacus.state import JobState, StateFile, start_line
from services import targets
from settings import Settings
from settings.logs import configure_for

log = logging.getLogger("abacus.runner")

TERMINAL = {"FINISHED", "CANCELED", "FAILED"}


class _Requests:
    def __init__(self) -> None:
        self.action: str | None = None

    def cancel(self, *_: Any) -> None:
        self.action = self.action or "cancel"

    def savepoint(self, *_: Any) -> None:
        self.action = "savepoint"


def run(request: dict[str, Any], foreground: bool = False) -> int:
    settings = Settings.model_validate(request["settings"])
    spec = JobSpec(**request["spec"])
    memory = Memory(**request["memory"])
    restore_from = Path(request["restore_from"]) if request.get("restore_from") else None
    state_file = StateFile(Path(request["state_path"]))
    metrics_port = _metrics_port(settings)
    state = JobState(
        name=spec.name,
        kind=spec.kind,
        target=spec.target,
        pid=os.getpid(),
        status="STARTING",
        started_at=time.time(),
        restored_from=str(restore_from) if restore_from else None,
        progress_dir=spec.progress_dir,
        group_id=spec.group_id,
        topic=job_topic(settings, spec),
        run_started_ms=spec.run_started_ms,
        spec=asdict(spec),
    )
    state_file.write(state)
    log.info("%s", start_line(spec.name, state.pid))
    requests = _Requests()
    signal.signal(signal.SIGTERM, requests.cancel)
    signal.signal(signal.SIGUSR1, requests.savepoint)
    if foreground:
        signal.signal(signal.SIGINT, requests.cancel)
    try:
        prepare_process(memory, Path(request["log_dir"]))
        conf = configuration(
            settings,
            spec.name,
            request["parallelism"],
            memory,
            restore_from,
            checkpoint_root(settings, spec.name),
            request["jars"],
            metrics_port,
        )
        env = local_environment(conf)
        build(env, settings, spec)
        client = env.execute_async(f"abacus-{spec.name}")
    except Exception as exc:
        state = state.replace(status="FAILED", error=f"{type(exc).__name__}: {exc}"[:2000])
        state_file.write(state)
        log.exception("job %s could not start", spec.name)
        return 1
    rest = _rest_url(client)
    announced = _announce(settings, spec.name, metrics_port)
    state = state.replace(
        status="RUNNING",
        job_id=str(client.get_job_id()),
        rest_port=int(rest.rsplit(":", 1)[1]) if rest else None,
        metrics_port=metrics_port if announced is not None else None,
    )
    state_file.write(state)
    log.info("job %s running: %s", spec.name, state.job_id)
    try:
        return _supervise(client, state, state_file, requests, settings, rest)
    finally:
        if announced is not None:
            targets.unregister(announced)


def _metrics_port(settings: Settings) -> int | None:
    """The port of the job's Prometheus reporter (flink.metrics_port: None = none, 0 = a
    free one)."""
    port = settings.flink.metrics_port
    if port is None:
        return None
    return port or targets.free_port()


def _announce(settings: Settings, name: str, port: int | None, wait_s: float = 30) -> Path | None:
    """Announce the job's metrics endpoint to Prometheus once it serves this job's metrics
    (the reporter starts with the MiniCluster, the job's series once it is submitted); None
    when it does not: the port was taken (by another job's reporter, when flink.metrics_port
    is not 0), the reason is in the job's Flink log."""
    if port is None:
        return None
    url = f"http://127.0.0.1:{port}/metrics"
    mine = f'job_name="abacus-{name}"'.encode()
    deadline = time.monotonic() + wait_s
    seen: object = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if mine in response.read():
                    break
                seen = "another job's metrics"
        except OSError as exc:
            seen = exc
        if time.monotonic() > deadline:
            log.warning("job %s: no metrics of its own at %s (%s): not announced", name, url, seen)
            return None
        time.sleep(0.5)
    try:
        path = targets.register(
            settings, "flink", name, targets.address("127.0.0.1", port), {"abacus_job": name}
        )
    except OSError as exc:  # the job counts on: only Prometheus does not find it
        log.warning("job %s: metrics at %s not announced: %s", name, url, exc)
        return None
    log.info("job %s: metrics at %s", name, url)
    return path


def _rest_url(client: Any) -> str | None:
    """The REST API of the MiniCluster that runs the job (`rest.bind-port` 0 picks a free
    port): where its failures are read. PyFlink's JobClient does not expose it; its Java
    MiniClusterJobClient holds the MiniCluster. None when that is not so."""
    try:
        j_client = client._j_job_client
        field = j_client.getClass().getDeclaredField("miniCluster")
        field.setAccessible(True)
        uri = str(field.get(j_client).getRestAddress().get().toString())
    except Exception:
        log.warning("no REST address for the job: its failures are reported when it ends")
        return None
    return uri.rstrip("/")


class _FailureWatch:
    """Reads the job's failures from its REST API: on every status change, every poll while
    it is not RUNNING, and every few seconds otherwise (a restart takes at least
    flink.restart_delay_s, so none goes unseen)."""

    EVERY_S = 5.0

    def __init__(self, rest: str | None, job_id: str) -> None:
        self.rest, self.job_id = rest, job_id
        self._last = 0.0
        self._status = ""

    def read(self, state: JobState, status: str) -> JobState:
        now = time.monotonic()
        due = status != "RUNNING" or status != self._status or now - self._last > self.EVERY_S
        self._status = status
        if self.rest is None or not due:
            return state
        self._last = now
        try:
            return with_failures(state, failures(self.rest, self.job_id))
        except Exception:  # best effort: the MiniCluster is shutting down, or too busy now
            return state  # (a job that ended: its execution result says why)


def _ended(client: Any, wait: bool = False) -> tuple[str, str | None] | None:
    """(status, reason) of a job that has ended, from its execution result; None when it
    has not ended (unless `wait`: then its end is waited for)."""
    future = client.get_job_execution_result()
    if not wait and not future.done():
        return None
    try:
        future.result()
    except Exception as exc:
        return "FAILED", root_cause(str(exc))
    return "FINISHED", None


def _supervise(
    client: Any,
    state: JobState,
    state_file: StateFile,
    requests: _Requests,
    settings: Settings,
    rest: str | None = None,
) -> int:
    watch = _FailureWatch(rest, str(state.job_id))
    while True:
        if requests.action == "savepoint":
            target = savepoint_dir(settings, state.name)
            state_file.write(state.replace(status="STOPPING"))
            try:
                path = _stop_with_savepoint(client, target)
            except Exception as exc:
                log.exception("stop with savepoint failed")
                state_file.write(state.replace(status="RUNNING", error=str(exc)[:2000]))
                requests.action = None
                continue
            state_file.write(
                state.replace(
                    status="STOPPED",
                    savepoint=str(path).removeprefix("file:"),
                    stopped_at=time.time(),
                )
            )
            log.info("job %s stopped with savepoint %s", state.name, path)
            return 0
        if requests.action == "cancel":
            state_file.write(state.replace(status="CANCELLING"))
            client.cancel().result()
            state_file.write(state.replace(status="CANCELED", stopped_at=time.time()))
            log.info("job %s cancelled (checkpoints retained)", state.name)
            return 0
        reason = None
        try:
            job_status = client.get_job_status().result()
            status = getattr(job_status, "name", str(job_status))
        except Exception:  # the MiniCluster shuts down once its job has ended
            ended = _ended(client)
            if ended is None:  # it has not: asking failed this time (an RPC timeout)
                time.sleep(0.5)
                continue
            status, reason = ended
        if status == "FAILED" and reason is None:
            reason = (_ended(client, wait=True) or ("FAILED", None))[1]
        seen = watch.read(state, status)
        if status != state.status or seen != state or reason:
            changed = status != state.status or seen.restarts != state.restarts
            state = seen.replace(status=status, error=reason or seen.error)
            if status == "FAILED":
                state = state.replace(stopped_at=time.time())
            state_file.write(state)
            if changed and state.restarts and status != "FAILED":
                log.warning(
                    "job %s is %s after %d restart(s); newest failure: %s",
                    state.name,
                    status,
                    state.restarts,
                    state.error,
                )
            elif changed:
                log.info("job %s is %s", state.name, status)
        if status in TERMINAL:
            if status == "FAILED":
                log.error(
                    "job %s FAILED after %d restart(s): %s", state.name, state.restarts, state.error
                )
            return 0 if status != "FAILED" else 1
        time.sleep(0.5)


def _stop_with_savepoint(client: Any, target: Path) -> str:
    """JobClient.stopWithSavepoint (PyFlink 2.2's wrapper lacks the format argument)."""
    from pyflink.java_gateway import get_gateway

    fmt = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    future = client._j_job_client.stopWithSavepoint(False, target.as_uri(), fmt)
    return str(future.get())


def submit_remote(request: dict[str, Any]) -> int:
    """Inside `flink run -py` (abacus.remote): build the job and submit it, detached."""
    settings = Settings.model_validate(request["settings"])
    spec = JobSpec(**request["spec"])
    restore_from = Path(request["restore_from"]) if request.get("restore_from") else None
    conf = configuration(
        settings,
        spec.name,
        request["parallelism"],
        Memory(**request["memory"]),
        restore_from,
        checkpoint_root(settings, spec.name),
        request["jars"],
    )
    env = local_environment(cluster_configuration(conf))  # the CLI's context: its cluster
    build(env, settings, spec)
    client = env.execute_async(f"abacus-{spec.name}")
    StateFile(Path(request["state_path"])).write(
        JobState(
            name=spec.name,
            kind=spec.kind,
            target=spec.target,
            pid=None,
            status="RUNNING",
            started_at=time.time(),
            job_id=str(client.get_job_id()),
            restored_from=str(restore_from) if restore_from else None,
            group_id=spec.group_id,
            topic=job_topic(settings, spec),
            remote=request.get("remote"),
            spec=asdict(spec),
        )
    )
    return 0


def main() -> None:
    if "--request-file" in sys.argv:
        path = Path(sys.argv[sys.argv.index("--request-file") + 1])
        request = json.loads(path.read_text())
        path.unlink(missing_ok=True)
        _configure_logs(request)
        sys.exit(submit_remote(request))
    request = json.load(sys.stdin)
    _configure_logs(request)
    sys.exit(run(request))


def _configure_logs(request: dict[str, Any]) -> None:
    """The request's settings say the format (services.log_format) and the secrets."""
    configure_for(
        Settings.model_validate(request["settings"]),
        logging.INFO,
        text_format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


if __name__ == "__main__":
    main()
