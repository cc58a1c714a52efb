"""The bridge as a managed background component: start, stop, status, by name.

A managed bridge is `python -m bridge run --mode M --status-file F [--topic T] [--queue Q]
[--dlq-topic D]` started detached (its own session: it outlives the command that started it) through
`services.procs.spawn`, with exactly the caller's settings. Its files, in
`<services.data_dir>/bridge/`:

- `<name>.pid`: its pid (written after the spawn, removed by `stop`);
- `<name>.log`: its output (appended; each start writes a header line);
- `<name>.json`: its status file (counts, connected, consumer tag: `bridge.status`);
- `<name>.lock`: held while a start or stop of that name runs, so two operators starting
  the same bridge at once get one process.

A process is taken for the bridge of that name only when the pid file's process is alive
and its command line is `bridge run` with that status file (a reused pid is not).

`start` is idempotent (a live bridge of that name is returned as it is, unless it runs with
another mode, topic, queue or DLQ topic: then it refuses; so does a foreground `bridge run`
writing the same status file) and returns once the bridge consumes (its
status file shows it connected under its consumer tag), or raises `BridgeError` with the
status's last error and the log's tail (the process stopped). `stop` sends SIGTERM (the
bridge stops consuming, flushes Kafka, acks only what Kafka confirmed, writes its final
counts and exits 0; the rest goes back to the queue) and waits for the exit; SIGKILL only
after `timeout_s`, said in the result. `remove_mirror` deletes the mirror and overflow
queues when leaving shadow (refused while a consumer holds the mirror).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import rabbit
from bridge.amqp091 import AmqpError
from bridge.rabbit import Mode
from bridge.status import read_status
from services import procs
from settings.logs import log_line
from settings.model import Settings
from settings.names import check_file_name

START_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 30
_MODES = ("shadow", "live")
# children started by this process, by pid: their exit status is read by `stop` (a Popen
# dropped would be reaped by the next Popen's cleanup, and its exit code lost)
_children: dict[int, subprocess.Popen[bytes]] = {}


class BridgeError(RuntimeError):
    """A managed bridge could not be started, stopped or found; the message says why."""


@dataclass(frozen=True)
class Paths:
    name: str
    pid: Path
    log: Path
    status: Path
    lock: Path


def paths(settings: Settings, name: str) -> Paths:
    """The files of the managed bridge `name` (absolute: the bridge runs detached)."""
    check_file_name(name)
    base = Path(settings.services.data_dir).resolve() / "bridge"
    return Paths(
        name,
        base / f"{name}.pid",
        base / f"{name}.log",
        base / f"{name}.json",
        base / f"{name}.lock",
    )


def start(
    settings: Settings,
    mode: Mode,
    name: str | None = None,
    topic: str | None = None,
    queue: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
    dlq_topic: str | None = None,
) -> dict[str, Any]:
    """Start the bridge `name` (default: the mode's name) unless it runs; return once it
    consumes. Shadow mode declares the bounded mirror queue (and its overflow queue) on the
    configured exchange first: a mirror left with other arguments raises
    `rabbit.MirrorQueueMismatch` at once, before any process is started."""
    if mode not in _MODES:
        raise BridgeError(f"mode {mode!r}: expected shadow or live")
    p = paths(settings, name or mode)
    want = {
        "mode": mode,
        "topic": topic or settings.kafka.topic,
        "queue": queue or rabbit.queue_for(mode, settings.rabbitmq),
        "dlq_topic": dlq_topic or settings.kafka.dlq_topic,
    }
    began = time.monotonic()
    with _locked(p):
        pid = _running_pid(p)
        if pid is not None:
            doc = _wait_consuming(p, pid, None, began + timeout_s)
            _check_same(p, doc, want)
            return _result(p, pid, doc, began, already_running=True)
        other = read_status(p.status)
        if other is not None and other.get("running"):
            raise BridgeError(
                f"a bridge not started by `bridge start` (pid {other.get('pid')}, "
                f"`bridge run`?) writes {p.status}: stop it first, or use another --name"
            )
        stale = _clean_stale(p)
        if mode == "shadow":
            rabbit.check_shadow_topology(settings.rabbitmq)  # MirrorQueueMismatch now
        args = ["-m", "bridge", "run", "--mode", mode, "--status-file", str(p.status)]
        if topic:
            args += ["--topic", topic]
        if queue:
            args += ["--queue", queue]
        if dlq_topic:
            args += ["--dlq-topic", dlq_topic]
        p.log.parent.mkdir(parents=True, exist_ok=True)
        with p.log.open("a", encoding="utf-8") as log:
            log.write(
                log_line(
                    settings, "abacus.bridge.manage", f"start bridge {p.name}: {' '.join(args)}"
                )
                if settings.services.log_format == "json"
                else f"=== abacus: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                f"start bridge {p.name}: {' '.join(args)}\n"
            )
        child = procs.spawn(settings, args, p.log, detach=True)
        _children[child.pid] = child
        _write_pid(p, child.pid)
        try:
            doc = _wait_consuming(p, child.pid, child, began + timeout_s)
        except BridgeError:
            _terminate(child.pid, 30.0)
            p.pid.unlink(missing_ok=True)
            raise
        return _result(p, child.pid, doc, began, already_running=False, stale_pid=stale)


def stop(settings: Settings, name: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Stop the bridge `name`: SIGTERM, wait for its exit (it flushes Kafka and acks only
    what Kafka confirmed); SIGKILL after `timeout_s` (`killed` in the result: its unacked
    messages go back to the queue, redelivered). Not running: nothing to do (said so)."""
    p = paths(settings, name)
    began = time.monotonic()
    with _locked(p):
        pid = _running_pid(p)
        if pid is None:
            stale = _clean_stale(p)
            return {
                "name": name,
                "was_running": False,
                "stale_pid": stale,
                "status_file": str(p.status),
            }
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        exit_code, killed = _wait_exit(pid, began + timeout_s)
        p.pid.unlink(missing_ok=True)
    doc = read_status(p.status) or {}
    return {
        "name": name,
        "was_running": True,
        "pid": pid,
        "killed": killed,
        "exit_code": exit_code,  # None: not a child of this process (see `stopped_cleanly`)
        # the bridge's last status write says it stopped (flushed, acked what Kafka confirmed)
        "stopped_cleanly": bool(doc.get("stopped")) and doc.get("pid") == pid and not killed,
        "seconds": round(time.monotonic() - began, 3),
        "totals": doc.get("totals"),
        "in_flight": doc.get("in_flight"),
        "last_error": doc.get("last_error") or None,
        "log": str(p.log),
        "status_file": str(p.status),
    }


def status(settings: Settings, name: str) -> dict[str, Any]:
    """Is the bridge `name` running, its pid, and the counts of its status file (of the
    last run when it is not running)."""
    p = paths(settings, name)
    pid = _running_pid(p)
    doc = read_status(p.status) or {}
    out: dict[str, Any] = {
        "name": name,
        "running": pid is not None,
        "pid": pid,
        "stale_pid": None if pid is not None else _pid_in_file(p),
        "log": str(p.log),
        "status_file": str(p.status),
    }
    for key in ("mode", "queue", "topic", "dlq_topic", "connected", "consumer_tag", "in_flight"):
        out[key] = doc.get(key)
    out["totals"] = doc.get("totals")
    out["last_error"] = doc.get("last_error") or None
    out["updated_at"] = doc.get("updated_at")
    if pid is None:
        out["connected"], out["consumer_tag"] = False, None
    return out


def names(settings: Settings) -> list[str]:
    """The bridges with a pid or status file in `<data_dir>/bridge/` (managed or not)."""
    base = Path(settings.services.data_dir).resolve() / "bridge"
    found = set()
    for path in (*base.glob("*.pid"), *base.glob("*.json")):
        with contextlib.suppress(ValueError):
            found.add(check_file_name(path.stem))
    return sorted(found)


def ps(settings: Settings) -> list[dict[str, Any]]:
    """`status` of every bridge `names` finds."""
    return [status(settings, n) for n in names(settings)]


def remove_mirror(settings: Settings) -> dict[str, Any]:
    """Delete the mirror queue and its overflow queue (leaving shadow). Refused while a
    consumer holds the mirror (stop the shadow bridge first: it would declare it again).
    The messages still in them are dropped (copies: legacy's queue has every original),
    and counted in the result. Idempotent: queues already gone count 0."""
    r = settings.rabbitmq
    try:
        with rabbit.connect(r, heartbeat_s=0) as conn:
            dropped = rabbit.delete_shadow_queues(conn, r)
    except rabbit.MirrorQueueInUse as exc:
        raise BridgeError(str(exc)) from None
    except (AmqpError, OSError) as exc:
        raise BridgeError(f"cannot delete the mirror queues: {type(exc).__name__}: {exc}") from None
    return {"deleted": dropped}


# -- processes ---------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(p: Paths) -> Iterator[None]:
    p.lock.parent.mkdir(parents=True, exist_ok=True)
    with p.lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_in_file(p: Paths) -> int | None:
    try:
        return int(p.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _ours(pid: int, p: Paths) -> bool:
    """`pid` is alive and is `bridge run` with this bridge's status file."""
    child = _children.get(pid)
    if child is not None:
        child.poll()  # reaps it when it exited (its exit code kept for `stop`)
    else:
        procs.reap(pid)
    if not procs.alive(pid):
        return False
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile
        return False
    return b"bridge" in parts and b"run" in parts and str(p.status).encode() in parts


def _running_pid(p: Paths) -> int | None:
    pid = _pid_in_file(p)
    return pid if pid is not None and _ours(pid, p) else None


def _clean_stale(p: Paths) -> int | None:
    """Remove a pid file whose process is not the running bridge; its pid."""
    stale = _pid_in_file(p)
    p.pid.unlink(missing_ok=True)
    return stale


def _write_pid(p: Paths, pid: int) -> None:
    tmp = p.pid.with_suffix(f".pid.{os.getpid()}.tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, p.pid)


def _wait_consuming(
    p: Paths, pid: int, child: subprocess.Popen[bytes] | None, deadline: float
) -> dict[str, Any]:
    """The status document once bridge `pid` consumes (connected, under its consumer tag)."""
    doc: dict[str, Any] | None = None
    while True:
        doc = read_status(p.status)
        mine = doc is not None and doc.get("pid") == pid
        if mine and doc is not None and doc.get("connected") and not doc.get("stopped"):
            return doc
        exited = child.poll() if child is not None else None
        if exited is not None or not procs.alive(pid):
            code = f" with code {exited}" if exited is not None else ""
            raise BridgeError(
                f"bridge {p.name} (pid {pid}) exited{code} before consuming\n" + _log_excerpt(p)
            )
        if time.monotonic() >= deadline:
            last = (doc or {}).get("last_error") if mine else "no status written yet"
            raise BridgeError(
                f"bridge {p.name} (pid {pid}) did not consume in time "
                f"(last error: {last or 'none'}); stopped it\n" + _log_excerpt(p)
            )
        time.sleep(0.2)


def _wait_exit(pid: int, deadline: float) -> tuple[int | None, bool]:
    """Wait for `pid` to exit; SIGKILL at the deadline. (exit code if ours, killed)."""
    child = _children.get(pid)
    killed = False
    while True:
        if child is not None:
            if child.poll() is not None:
                break
        else:
            procs.reap(pid)
            if not procs.alive(pid):
                break
        if time.monotonic() >= deadline and not killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed = True  # SIGKILL cannot be ignored: wait for the exit
        time.sleep(0.1)
    if child is not None:
        _children.pop(pid, None)
        return child.returncode, killed
    return None, killed


def _terminate(pid: int, grace_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _wait_exit(pid, time.monotonic() + grace_s)


def _log_excerpt(p: Paths) -> str:
    lines = procs.tail(p.log, LOG_TAIL_LINES)
    body = "\n".join("    " + line for line in lines)
    return f"  log: {p.log}\n  last {LOG_TAIL_LINES} lines:\n{body or '    (empty)'}"


def _check_same(p: Paths, doc: dict[str, Any], want: dict[str, str]) -> None:
    differ = {k: doc.get(k) for k, v in want.items() if doc.get(k) != v}
    if differ:
        running = ", ".join(f"{k} {doc.get(k)}" for k in want)
        asked = ", ".join(f"{k} {v}" for k, v in want.items())
        raise BridgeError(
            f"bridge {p.name} runs with {running}, not {asked}: stop it first "
            f"(`abacus bridge stop {p.name}`) or start this one under another --name"
        )


def _result(
    p: Paths,
    pid: int,
    doc: dict[str, Any],
    began: float,
    already_running: bool,
    stale_pid: int | None = None,
) -> dict[str, Any]:
    return {
        "name": p.name,
        "pid": pid,
        "already_running": already_running,
        "stale_pid": stale_pid,
        "mode": doc.get("mode"),
        "queue": doc.get("queue"),
        "topic": doc.get("topic"),
        "dlq_topic": doc.get("dlq_topic"),
        "consumer_tag": doc.get("consumer_tag"),
        "seconds": round(time.monotonic() - began, 3),
        "log": str(p.log),
        "pid_file": str(p.pid),
        "status_file": str(p.status),
    }
