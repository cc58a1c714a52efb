"""Processes: facts read from /proc (Linux: liveness, our marker, RSS, CPU, port owners, log
tails), and the one way a pipeline component is started as a child of ours (`spawn`: the
exact settings in its environment, its output to a log, `Child` to watch and stop it)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from settings import Settings

# Every process a service starts carries this variable (children inherit it: RabbitMQ's epmd,
# erl_child_setup...), so we find the whole tree of a service and tell it from strangers.
MARKER_VAR = "ABACUS_SERVICE_DIR"


def _proc(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    stat = _proc(pid, "stat")
    if stat is None:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


_STATES = {
    b"R": "running",
    b"S": "sleeping",
    b"D": "disk sleep",
    b"T": "stopped",
    b"t": "tracing stop",
    b"Z": "zombie",
    b"X": "dead",
    b"I": "idle",
}


def state(pid: int) -> str:
    """The kernel's state of a process, in words ("stopped" after SIGSTOP; "gone")."""
    stat = _proc(pid, "stat")
    if stat is None:
        return "gone"
    code = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return _STATES.get(code, code.decode(errors="replace"))


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment has MARKER_VAR=marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        environ = _proc(int(entry.name), "environ")
        if environ and needle in environ.split(b"\0") and alive(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def is_marked(pid: int, marker: str) -> bool:
    environ = _proc(pid, "environ") or b""
    return f"{MARKER_VAR}={marker}".encode() in environ.split(b"\0")


def marker_of(pid: int) -> str | None:
    """The MARKER_VAR value of a process (None when it has none)."""
    prefix = f"{MARKER_VAR}=".encode()
    for item in (_proc(pid, "environ") or b"").split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    status = _proc(pid, "status") or b""
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def reap(pid: int) -> None:
    """Collect the exit status of a child of this process, so it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_free(host: str, port: int) -> bool:
    """True when nothing is bound to host:port (a bound socket counts, even if not listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_owners(port: int) -> set[int]:
    """Pids holding a TCP socket bound to `port` (any address, any state but TIME_WAIT)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] != "06" and fields[9] != "0":
                    inodes.add(f"socket:[{fields[9]}]")
    owners: set[int] = set()
    if not inodes:
        return owners
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        owners.add(int(entry.name))
                        break
    return owners


def command_line(pid: int) -> str:
    raw = _proc(pid, "cmdline") or b""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file ([] when it does not exist)."""
    try:
        with path.open(errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except FileNotFoundError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that give a child process exactly these settings (secrets
    included: for a child's environment only, never for printing)."""
    env: dict[str, str] = {}
    for section in type(settings).model_fields:
        value = getattr(settings, section)
        data = value.model_dump(mode="python")
        for name, item in data.items():
            if hasattr(item, "get_secret_value"):
                data[name] = item.get_secret_value()
        env[f"ABACUS_{section.upper()}"] = json.dumps(data, default=str)
    return env


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment for a child that must see exactly `settings`: every other
    ABACUS_* variable (a nested override, ABACUS_CONFIG) is removed, so none can override
    the sections that travel whole."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABACUS_")}
    env.update(settings_env(settings))
    return env


@dataclass
class Child:
    """A component running as a child process of ours, its output in `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """Warm shutdown (SIGTERM: finish the work in hand), then kill if it hangs."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def failure(self) -> str | None:
        """Why the process died, from its log: the last line of a traceback; None while it
        runs or when it said nothing."""
        if self.alive():
            return None
        return _traceback_end(self.log_tail(400).splitlines())

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _traceback_end(lines: list[str]) -> str | None:
    for i in range(len(lines) - 1, 0, -1):
        if (
            lines[i]
            and not lines[i].startswith((" ", "\t"))
            and any("Traceback" in x for x in lines[:i])
        ):
            return lines[i].strip()
    return None


def spawn(
    settings: Settings,
    args: list[str],
    log_path: Path,
    cwd: Path | None = None,
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `python ARGS` (this interpreter) with exactly `settings` in its environment
    (`child_env`), its stdout and stderr appended to `log_path`, no stdin. `detach`: in its
    own session, so it outlives the command that started it and a terminal's Ctrl-C or
    hang-up does not reach it (a managed background component)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *args],
            env=child_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=detach,
        )
