"""One local server run as a background process: start, wait until it serves, stop, status.

A subclass says how to configure, launch and probe its server; everything about processes
(pid file, log file, process group, readiness loop, port checks, RSS) lives here once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from services import procs
from services.paths import service_dir
from settings.model import Settings

Progress = Callable[[str, str], None]  # (service name, message)
LOG_TAIL_LINES = 20


class ServiceError(RuntimeError):
    """A service could not be installed, started or stopped; the message says why."""


class PortInUseError(ServiceError):
    pass


class NotInstalledError(ServiceError):
    pass


class StartError(ServiceError):
    pass


@dataclass(frozen=True, slots=True)
class StartResult:
    name: str
    pid: int
    version: str
    seconds: float
    already_running: bool
    # what was found dead and cleaned before this start: a stale pid file's pid, leftover
    # processes of ours (e.g. a RabbitMQ beam.smp whose launcher was killed)
    stale_pid: int | None = None
    leftovers: tuple[int, ...] = ()

    @property
    def restarted(self) -> bool:
        """True when the server had died (its pid file or processes were left) and was
        started again."""
        return not self.already_running and (self.stale_pid is not None or bool(self.leftovers))


@dataclass(frozen=True, slots=True)
class StopResult:
    name: str
    was_running: bool
    seconds: float
    killed: bool  # SIGKILL was needed after the grace period
    purged: bool


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    state: str  # running | unresponsive | dead | stopped
    address: str
    pid: int | None
    pids: tuple[int, ...]  # the whole process tree (e.g. beam.smp + epmd)
    version: str | None
    rss_bytes: int
    started_at: str | None
    log: str
    detail: str | None = None


class Service(ABC):
    """A server we launch; subclasses fill in the server-specific parts."""

    name: ClassVar[str]
    stop_grace_s: ClassVar[float] = 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = service_dir(settings, self.name)
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.out"

    # ---- server specific -------------------------------------------------------------------

    @property
    @abstractmethod
    def host(self) -> str: ...

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Every port the server binds, by role; the first one is the client port."""

    @abstractmethod
    def missing(self) -> str | None:
        """What is not installed (None when the server can be launched)."""

    @abstractmethod
    def configure(self) -> None:
        """Write configuration files (absolute paths) and run one-off steps (e.g. formatting)."""

    @abstractmethod
    def command(self) -> list[str]: ...

    def environment(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def probe(self) -> str:
        """A real client round trip; returns the server version or raises."""

    def shareable(self, role: str, owners: set[int]) -> bool:
        """True when the processes holding the `role` port may be shared (e.g. epmd)."""
        return False

    def data_paths(self) -> list[Path]:
        """What `down --purge` removes (default: the whole service directory)."""
        return [self.dir]

    # ---- shared process handling ----------------------------------------------------------

    @property
    def port(self) -> int:
        return next(iter(self.ports().values()))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def marker(self) -> str:
        return str(self.dir)

    def pid(self) -> int | None:
        """The pid of our running server, or None (a stale pid file does not count)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        procs.reap(pid)
        if procs.alive(pid) and procs.is_marked(pid, self.marker):
            return pid
        return None

    def stale_pid(self) -> int | None:
        """The pid in the pid file when that process is not our running server (it died,
        possibly moments ago, or the pid was reused): the file is stale."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return None if self.pid() == pid else pid

    def processes(self) -> list[int]:
        return procs.marked_pids(self.marker)

    def leftovers(self) -> list[int]:
        """Processes of ours still alive although the server is not (its launcher died):
        they hold its ports or files. A shareable one (RabbitMQ's epmd) is not a leftover."""
        found = []
        for pid in self.processes():
            shared = any(
                pid in procs.port_owners(port) and self.shareable(role, {pid})
                for role, port in self.ports().items()
            )
            if not shared:
                found.append(pid)
        return found

    def clean_dead(self, grace_s: float = 30.0) -> tuple[int | None, tuple[int, ...]]:
        """Before a start when our server is not running: remove a stale pid file and end
        the leftovers of a dead server (SIGTERM, SIGKILL after `grace_s`), waiting until
        they are gone so their ports are free. Returns (stale pid, leftover pids)."""
        stale = self.stale_pid()
        deadline = time.monotonic() + grace_s
        if stale is not None:
            procs.reap(stale)
            # a process still exiting (its memory already gone: no cmdline, no marker) may
            # hold its ports a moment longer; a reused pid has a command line
            while procs.alive(stale) and not procs.command_line(stale):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while remaining := [p for p in left if procs.alive(p)]:
            if time.monotonic() >= deadline:
                for pid in remaining:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")  # SIGKILL cannot be ignored: wait for the exit
            time.sleep(0.2)
        if stale is not None:
            self.pid_file.unlink(missing_ok=True)
        return stale, tuple(left)

    def check_ports(self) -> None:
        """Raise PortInUseError when a port we need is held by a process we did not start."""
        for role, port in self.ports().items():
            if procs.port_free(self.host, port):
                continue
            owners = procs.port_owners(port)
            if owners and all(procs.is_marked(p, self.marker) for p in owners):
                continue  # ours, e.g. the epmd a previous RabbitMQ left behind
            if owners and self.shareable(role, owners):
                continue
            who = ", ".join(f"pid {p} ({procs.command_line(p)[:80]})" for p in sorted(owners))
            others = sorted({m for m in map(procs.marker_of, owners) if m})
            whose = (
                f"started by abacus for another data dir: {', '.join(others)}"
                if others
                else "not started by abacus"
            )
            raise PortInUseError(
                f"port {port} for {self.name} is in use by another process ({whose}): "
                f"it is the {role} port" + (f"; held by {who}" if who else "")
            )

    def held_by(self) -> str | None:
        """Who holds the client port of a server that is not running here: typically the
        server of another data dir (settings that name another installation); None when
        the port is free."""
        try:
            if procs.port_free(self.host, self.port):
                return None
        except OSError:  # not an address of this machine
            return None
        owners = procs.port_owners(self.port)
        others = sorted({m for m in map(procs.marker_of, owners) if m and m != self.marker})
        if others:
            return f"port in use by {', '.join(others)}"  # another data dir's service dir
        return "port in use, not by abacus"

    def log_excerpt(self, lines: int = LOG_TAIL_LINES) -> str:
        body = "\n".join("    " + line for line in procs.tail(self.log_file, lines))
        return f"  log: {self.log_file}\n  last {lines} lines:\n{body or '    (empty)'}"

    def start(self, timeout_s: float, progress: Progress | None = None) -> StartResult:
        """Launch the server unless ours is running, then wait until it really serves."""
        report = progress or (lambda _name, _msg: None)
        began = time.monotonic()
        pid = self.pid()
        if pid is not None:
            report(self.name, f"already running (pid {pid}), probing")
            try:
                version = self._wait_ready(pid, None, began + min(timeout_s, 30.0), report)
                return StartResult(self.name, pid, version, time.monotonic() - began, True)
            except StartError:
                if procs.alive(pid):  # alive and not serving (e.g. SIGSTOPped): say so
                    raise
                # it died while we probed (e.g. killed moments before): start it again
        stale, left = self.clean_dead()
        if stale is not None or left:
            what = ", ".join(
                [
                    *([f"stale pid {stale}"] if stale is not None else []),
                    *([f"ended leftover pid(s) {', '.join(map(str, left))}"] if left else []),
                ]
            )
            report(self.name, f"was dead ({what}); starting again")
        self.dir.mkdir(parents=True, exist_ok=True)
        report(self.name, "configuring")
        self.configure()
        if self.log_file.exists():
            self.log_file.replace(self.log_file.with_suffix(".out.1"))
        env = {**os.environ, **self.environment(), procs.MARKER_VAR: self.marker}
        with self.log_file.open("ab") as log:
            log.write(f"=== abacus: {' '.join(self.command())}\n".encode())
            log.flush()
            child = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{child.pid}\n")
        report(self.name, f"started pid {child.pid}, waiting until it serves")
        try:
            version = self._wait_ready(child.pid, child, began + timeout_s, report)
        except StartError:
            self.stop()
            raise
        return StartResult(
            self.name, child.pid, version, time.monotonic() - began, False, stale, left
        )

    def _wait_ready(
        self,
        pid: int,
        child: subprocess.Popen[bytes] | None,
        deadline: float,
        report: Progress,
    ) -> str:
        last_error = "no answer yet"
        while True:
            exited = child.poll() if child is not None else None
            if exited is not None or not procs.alive(pid):
                if exited is None and child is not None:  # a zombie between poll and alive
                    exited = child.wait(timeout=10)
                code = f" with code {exited}" if exited is not None else ""
                raise StartError(
                    f"{self.name} exited{code} before serving on {self.address}\n"
                    + self.log_excerpt()
                )
            if procs.port_open(self.host, self.port):
                try:
                    return self.probe()
                except Exception as exc:  # any client error means "not ready yet"
                    last_error = f"{type(exc).__name__}: {exc}"
            else:
                last_error = f"{self.address} does not accept connections yet"
            if time.monotonic() >= deadline:
                if child is None:  # already running before this call: not ours to stop
                    raise StartError(
                        f"{self.name} (pid {pid}, state {procs.state(pid)}) is alive but "
                        f"does not serve on {self.address} (last probe: {last_error}); "
                        "left as it is\n" + self.log_excerpt()
                    )
                raise StartError(
                    f"{self.name} did not serve on {self.address} in time "
                    f"(services.start_timeout_s; last probe: {last_error}); stopped it\n"
                    + self.log_excerpt()
                )
            time.sleep(0.5)

    def stop(self, purge: bool = False, grace_s: float | None = None) -> StopResult:
        """SIGTERM the process group (and strays like epmd), SIGKILL after the grace period."""
        began = time.monotonic()
        pid = self.pid()
        targets = set(self.processes())
        was_running = pid is not None or bool(targets)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        for stray in targets - {pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stray, signal.SIGTERM)
        killed = False
        deadline = began + (self.stop_grace_s if grace_s is None else grace_s)
        while True:
            if pid is not None:
                procs.reap(pid)
            remaining = [p for p in targets | set(self.processes()) if procs.alive(p)]
            if not remaining:
                break
            if time.monotonic() >= deadline:
                for p in remaining:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)
        if purge:
            for path in self.data_paths():
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        return StopResult(self.name, was_running, time.monotonic() - began, killed, purge)

    def status(self) -> ServiceStatus:
        pid = self.pid()
        tree = tuple(self.processes())
        rss = sum(procs.rss_bytes(p) for p in tree)
        started = None
        if pid is not None:
            mtime = self.pid_file.stat().st_mtime
            started = datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
        version = detail = None
        if pid is None:
            state = "dead" if self.pid_file.exists() else "stopped"
            # a free port, or who holds it (a server of another data dir: other settings)
            detail = f"stray processes: {', '.join(map(str, tree))}" if tree else self.held_by()
        else:
            try:
                version = self.probe()
                state = "running"
            except Exception as exc:
                state, detail = "unresponsive", f"{type(exc).__name__}: {exc}"
        return ServiceStatus(
            self.name,
            state,
            self.address,
            pid,
            tree,
            version,
            rss,
            started,
            str(self.log_file),
            detail,
        )
