"""A real standalone Flink cluster for integration tests: one JobManager and one TaskManager
started from the PyFlink wheel's own scripts (`bin/jobmanager.sh start-foreground`,
`bin/taskmanager.sh start-foreground`) as local processes, configured by a `config.yaml` in a
temp dir (free ports, 127.0.0.1, small memory, this virtualenv's Python for the workers).
Its `lib/` is the wheel's plus `opt/flink-python-*.jar`, as a cluster that runs PyFlink jobs
needs: loaded once by the cluster, not by each job (pemja's native library can be loaded by
one class loader only, so a second Python job on a TaskManager would fail).

    with FlinkCluster(tmp_dir) as cluster:   # up once its REST API reports free slots
        cluster.address                       # "127.0.0.1:<rest port>" = flink.jobmanager

Stopping sends SIGTERM to each process group, then SIGKILL after a grace period, so nothing
is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pyflink
import yaml

FLINK_HOME = Path(pyflink.__file__).parent
START_TIMEOUT_S = 90


class ClusterError(Exception):
    """The cluster did not come up; the message carries its logs' tails."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(rest_port: int, rpc_port: int, slots: int) -> dict[str, Any]:
    """The wheel's config.yaml (its JVM --add-opens options) with ours on top."""
    base = yaml.safe_load((FLINK_HOME / "conf" / "config.yaml").read_text()) or {}
    java_opts = base.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
    return {
        "env.java.opts.all": java_opts,
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.memory.process.size": "768m",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.numberOfTaskSlots": slots,
        "taskmanager.memory.process.size": "1536m",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": rest_port,
        "parallelism.default": 1,
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "blob.server.port": "0",
    }


class FlinkCluster:
    def __init__(self, root: Path, slots: int = 2) -> None:
        self.root = root
        self.slots = slots
        self.rest_port = free_port()
        self.conf_dir = root / "conf"
        self.lib_dir = root / "lib"
        self.log_dir = root / "log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=10) as response:
            return json.load(response)

    def start(self) -> FlinkCluster:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = _config(self.rest_port, free_port(), self.slots)
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(config))
        self.lib_dir.mkdir(exist_ok=True)
        for jar in [
            *(FLINK_HOME / "lib").glob("*.jar"),
            *(FLINK_HOME / "opt").glob("flink-python-*.jar"),
        ]:
            (self.lib_dir / jar.name).symlink_to(jar)
        for name in ("log4j-console.properties", "log4j-cli.properties", "logback-console.xml"):
            (self.conf_dir / name).write_bytes((FLINK_HOME / "conf" / name).read_bytes())
        bin_dir = str(Path(sys.executable).parent)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"JVM_ARGS", "FLINK_ENV_JAVA_OPTS"} and not k.startswith("ABACUS_")
        }
        env.update(
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LIB_DIR=str(self.lib_dir),
            FLINK_LOG_DIR=str(self.log_dir),
            FLINK_PID_DIR=str(self.root),
            # thread mode: the workers' python must be this virtualenv's, first on PATH
            PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        )
        for role in ("jobmanager", "taskmanager"):
            with open(self.log_dir / f"{role}.out", "ab") as out:
                self.procs[role] = subprocess.Popen(
                    ["bash", str(FLINK_HOME / "bin" / f"{role}.sh"), "start-foreground"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    cwd=self.root,
                )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: Any = None
        while time.monotonic() < deadline:
            dead = [role for role, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise ClusterError(f"flink {', '.join(dead)} exited\n{self.log_tail()}")
            try:
                seen = self.rest("/overview")
            except (OSError, urllib.error.URLError, ValueError):
                seen = None
            if seen and seen.get("taskmanagers", 0) >= 1 and seen.get("slots-available", 0) >= 1:
                return
            time.sleep(1)
        raise ClusterError(
            f"flink cluster at {self.address} not ready after "
            f"{START_TIMEOUT_S}s (overview {seen})\n{self.log_tail()}"
        )

    def job_errors(self, job_id: str) -> list[str]:
        """The exceptions the cluster recorded for a job (restarts included), newest first."""
        history = self.rest(f"/jobs/{job_id}/exceptions").get("exceptionHistory", {})
        return [
            f"{e.get('exceptionName')}: {e.get('stacktrace', '')[:600]}"
            for e in history.get("entries", [])
        ]

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self, grace_s: float = 30) -> None:
        for proc in self.procs.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(10)

    def __enter__(self) -> FlinkCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """The process group: the JVM and whatever Python workers it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
