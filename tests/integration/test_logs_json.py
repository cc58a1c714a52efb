"""`--log-format json` on the real servers: the bridge and a legacy worker run briefly,
every line of their output is a JSON event with the fields, and the settings' secrets
(the RabbitMQ password among them, a wrong one too) never appear in it, in either format."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abacus import manager
from bridge.status import read_status as bridge_status
from counting.corpus import tricky_lines
from legacy.app import WorkerOptions
from legacy.producer import publish_lines
from legacy.worker import WorkerProcess, start_worker
from services import procs
from services.paths import data_dir
from settings.logs import with_log_format
from settings.model import Settings
from shadow import installation
from shadow.installation import runs_dir
from storage import resources as storage_resources
from tests.integration import bridge_env, legacy_env
from tests.integration.abacus_runs import Run, generated_events, isolated_run
from tests.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration

TOKEN = "serve-T0ken-never-logged"
WRONG = "wr0ng-Rabbit-Passw0rd"
FIELDS = {"ts", "level", "logger", "msg"}


def _with_secrets(settings: Settings, rabbit_password: str | None = None) -> Settings:
    """The settings with a serve token, and another RabbitMQ password when given."""
    update: dict[str, Any] = {"serve": settings.serve.model_copy(update={"token": TOKEN})}
    if rabbit_password is not None:
        update["rabbitmq"] = settings.rabbitmq.model_copy(update={"password": rabbit_password})
    return settings.model_copy(update=update)


def _secrets(settings: Settings) -> list[str]:
    return [TOKEN, settings.rabbitmq.password.get_secret_value()]


def json_events(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON event with the fields (fails naming the first that
    is not one)."""
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line[:300]!r}") from None
        assert isinstance(event, dict) and set(event) >= FIELDS, f"line {n}: {line[:300]}"
        assert event["ts"].endswith("Z") and event["ts"][10] == "T", line
        events.append(event)
    assert events, "no output at all"
    return events


def assert_no_secret(text: str, settings: Settings) -> None:
    for secret in _secrets(settings):
        assert secret not in text, f"a secret ({len(secret)} chars) is in the log"


# ---------------------------------------------------------------- the bridge


@pytest.fixture
def bridge(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[bridge_env.Env]:
    with bridge_env.isolated(_with_secrets(settings), tmp_path / "data") as env:
        yield env


def test_bridge_run_in_json(bridge: bridge_env.Env, tmp_path: Path) -> None:
    total = 40
    bridge.publish([bridge_env.celery_message(bridge_env.event(i)) for i in range(total)])
    bridge.publish([(b"\xff not a task", {"content_type": "application/json"})])  # a DLQ
    status, log = tmp_path / "bridge.json", tmp_path / "bridge.log"
    args = ["-m", "cli", "bridge", "run", "--mode", "shadow", "-v", "--log-format", "json"]
    child = procs.Child(
        procs.spawn(bridge.settings, [*args, "--status-file", str(status)], log), log
    )
    try:
        wait_for(
            "the bridge moved every message",
            lambda: (bridge_status(status) or {}).get("totals", {}),
            lambda t: t.get("acked", 0) >= total + 1,
            timeout_s=120,
        )
    finally:
        code = child.stop()
    assert code == 0, log.read_text()[-2000:]
    text = log.read_text()
    events = json_events(text)
    assert_no_secret(text, bridge.settings)
    assert any(e["logger"].startswith("abacus.bridge") for e in events), text[-2000:]
    stopped = [e for e in events if str(e["msg"]).startswith("bridge stopped")]
    assert stopped and stopped[-1]["logger"] == "abacus.bridge", text[-2000:]


def test_bridge_start_in_json_writes_a_json_log(bridge: bridge_env.Env) -> None:
    """A background bridge (`bridge start`) gets the format in its settings: its log file,
    the line `start` writes before it included, is JSON."""
    from bridge import manage

    settings = with_log_format(bridge.settings, "json")
    started = manage.start(settings, "shadow", timeout_s=120)
    try:
        bridge.publish([bridge_env.celery_message(bridge_env.event(i)) for i in range(5)])
        wait_for(
            "the started bridge moved the messages",
            lambda: (bridge_status(Path(started["status_file"])) or {}).get("totals", {}),
            lambda t: t.get("acked", 0) >= 5,
            timeout_s=120,
        )
    finally:
        manage.stop(settings, started["name"], timeout_s=60)
    text = Path(started["log"]).read_text()
    events = json_events(text)
    assert events[0]["logger"] == "abacus.bridge.manage", text[:500]
    assert str(events[0]["msg"]).startswith("start bridge shadow")
    assert_no_secret(text, bridge.settings)


# ---------------------------------------------------------------- a legacy worker


@pytest.fixture
def legacy(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[legacy_env.Env]:
    with legacy_env.isolated(_with_secrets(settings), tmp_path, names="logs") as env:
        yield env


def _worker(settings: Settings, log: Path, fmt: str = "json") -> WorkerProcess:
    options = WorkerOptions(concurrency=1, flush_interval_s=0.2, loglevel="INFO")
    return start_worker(with_log_format(settings, fmt), options, log)


def test_legacy_worker_in_json(legacy: legacy_env.Env) -> None:
    lines = tricky_lines()  # valid ones, invalid ones (dead-lettered with a warning)
    log = legacy.tmp / "worker.log"
    process = _worker(legacy.settings, log)
    try:
        publish_lines(legacy.settings.rabbitmq, lines)

        def done() -> bool:
            assert process.alive(), log.read_text()[-3000:]
            return "succeeded in" in log.read_text()  # Celery's task events, as JSON

        wait_until("legacy worked on the events", done, timeout_s=180)
    finally:
        code = process.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    events = json_events(text)
    assert_no_secret(text, legacy.settings)
    loggers = {e["logger"] for e in events}
    assert "legacy.worker.start" in loggers  # the banner, as one event
    start = next(e for e in events if e["logger"] == "legacy.worker.start")
    assert start["queue"] == legacy.settings.rabbitmq.legacy_queue and "broker" in start
    assert any(str(e["msg"]).endswith("ready.") for e in events), loggers
    assert any("shutdown" in str(e["msg"]) for e in events), loggers  # Celery's notice


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_worker_with_a_wrong_password_never_logs_it(legacy: legacy_env.Env, fmt: str) -> None:
    settings = _with_secrets(legacy.settings, WRONG)
    log = legacy.tmp / f"worker-{fmt}.log"
    process = _worker(settings, log, fmt)
    try:
        wait_until(
            "the worker said it cannot connect",
            lambda: "ACCESS_REFUSED" in log.read_text() or "AccessRefused" in log.read_text(),
            timeout_s=90,
        )
    finally:
        process.stop()
    text = log.read_text()
    assert WRONG not in text and TOKEN not in text
    assert "amqp://" in text  # the URL is there, its password masked
    if fmt == "json":
        json_events(text)


# ---------------------------------------------------------------- commands run as a user runs them

ROOT = Path(__file__).resolve().parents[2]
CASSANDRA_USER = "abacus-logs"  # the shared Cassandra has no authentication: the user and
CASSANDRA_PASSWORD = "cass-Passw0rd-never-logged"  # password are sent, never checked
RABBIT_PASSWORD = "rabbit-Passw0rd-never-logged"  # for commands that never connect to it

# what a JVM writes on its own stderr (a job's runner log holds its stdout and stderr): the
# only lines of a JSON log that are not JSON. Each kind named, as the assertion reports it.
JVM_LINES: dict[str, re.Pattern[str]] = {
    # log4j's StatusLogger: "2026-11-27T16:59:29.530812599Z <thread> ERROR An exception ..."
    "log4j status": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.,]\d+Z .* (ERROR|WARN|INFO) "),
    "java stack frame": re.compile(r"^\s+(at [\w$.<>/]+\(.*\)|\.\.\. \d+ more)\s*$"),
    "java cause": re.compile(r"^\s*(Caused by|Suppressed): [\w$.]+"),
    "java exception": re.compile(r"^[a-z][\w$]*(\.[\w$]+)+(Exception|Error)\b"),
    "slf4j": re.compile(r"^SLF4J(\(\w\))?: "),
    "jvm warning": re.compile(r"^(WARNING: |OpenJDK 64-Bit Server VM warning: )"),
    "blank line after a java trace": re.compile(r"^\s*$"),  # never one of our events
}


def _jvm_kind(line: str) -> str | None:
    return next((kind for kind, pattern in JVM_LINES.items() if pattern.match(line)), None)


def test_the_jvm_lines_are_told_apart_from_ours() -> None:
    """Lines seen in runners' logs (a job cancelled while its Kafka client logged) are the
    JVM's; a Python traceback, a text log line or our error line are not."""
    jvm = [
        "2026-11-27T16:59:29.530812599Z SourceCoordinator-Source: kafka ERROR An exception "
        "occurred processing Appender FileAppender java.lang.IllegalStateException: Trying "
        "to access closed classloader.",
        "\tat org.apache.flink.util.FlinkUserCodeClassLoaders$SafetyNetWrapperClassLoader"
        ".ensureInner(FlinkUserCodeClassLoaders.java:189)",
        "\tat java.base/java.lang.Thread.run(Thread.java:840)",
        "\t... 12 more",
        "Caused by: java.lang.ClassNotFoundException: org.apache.kafka.Foo",
        "java.lang.IllegalStateException: Trying to access closed classloader.",
        "SLF4J: No SLF4J providers were found.",
        "",
    ]
    ours = [
        "Traceback (most recent call last):",
        '  File "/work/main/abacus/runner.py", line 12, in run',
        "ValueError: bad",
        "2026-11-27 17:20:01,123 INFO abacus.runner job x starting (pid 1)",
        "abacus: error: cannot start",
        '{"ts": "2026-11-27T17:20:01.123Z", "level": "INFO"',
    ]
    assert [line for line in jvm if _jvm_kind(line) is None] == []
    assert {line: _jvm_kind(line) for line in ours} == dict.fromkeys(ours)


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an `abacus` subprocess: the test's data directory (so the test and
    the command see the same job and run files), secrets set, `extra`."""
    return {
        **os.environ,
        "ABACUS_SERVICES__DATA_DIR": str(data_dir(settings)),
        "ABACUS_CASSANDRA__USERNAME": CASSANDRA_USER,
        "ABACUS_CASSANDRA__PASSWORD": CASSANDRA_PASSWORD,
        "ABACUS_SERVE__TOKEN": TOKEN,
        **extra,
    }


def _no_secret_anywhere(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({len(secret)} chars) is in {where}"


def _abacus(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *args]


# ---------------------------------------------------------------- abacus serve


@pytest.fixture
def serve_env(settings: Settings, services_up: object) -> Iterator[Settings]:
    """The read API's keyspaces under a prefix of their own (stage legacy), dropped after."""
    prefix = f"tlog{uuid.uuid4().hex[:8]}_"
    isolated = settings.model_copy(
        update={"cassandra": settings.cassandra.model_copy(update={"keyspace_prefix": prefix})}
    )
    storage_resources.provision(isolated, SERVE_STORES)
    try:
        yield isolated
    finally:
        storage_resources.teardown(isolated, SERVE_STORES)


SERVE_STORES = ["legacy", "shadow", "ops"]


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_serve_in_json(serve_env: Settings, tmp_path: Path) -> None:
    """`abacus serve --log-format json` with a token: requests answered 200, 400 (a bad
    parameter), 401 (no token, a wrong one) and a malformed HTTP request (uvicorn's own
    warning): every line on stdout and stderr is an event, uvicorn's included, no secret."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    env = _cli_env(
        serve_env,
        ABACUS_CASSANDRA__KEYSPACE_PREFIX=serve_env.cassandra.keyspace_prefix,
        ABACUS_RABBITMQ__PASSWORD=RABBIT_PASSWORD,
    )
    with out.open("w") as stdout, err.open("w") as stderr:
        server = subprocess.Popen(
            _abacus("serve", "--port", str(port), "--log-format", "json"),
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    query = "company=ACME&statistic=opened&from=2025-12-01&to=2025-12-01"
    try:

        def up() -> bool:
            assert server.poll() is None, f"exit {server.returncode}: {err.read_text()[-2000:]}"
            try:
                return _get(base + "/health") == 200
            except OSError:
                return False

        wait_until("abacus serve answers /health", up, timeout_s=120)
        answers = {
            "ok": _get(f"{base}/v1/account-counts?{query}&resolution=day", TOKEN),
            "bad": _get(f"{base}/v1/account-counts?{query}&resolution=week", TOKEN),
            "no token": _get(f"{base}/v1/account-counts?{query}&resolution=day"),
            "wrong token": _get(f"{base}/v1/account-counts?{query}&resolution=day", WRONG),
        }
        assert answers == {"ok": 200, "bad": 400, "no token": 401, "wrong token": 401}
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert raw.recv(200).startswith(b"HTTP/1.1 400"), "uvicorn refuses it"
        wait_until(
            "uvicorn logged the malformed request",
            lambda: "Invalid HTTP request" in err.read_text(),
            timeout_s=60,
        )
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn's graceful shutdown
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise
    texts = {"stdout": out.read_text(), "stderr": err.read_text()}
    assert code == 0, texts
    assert texts["stdout"] == "", texts["stdout"][:2000]
    events = json_events(texts["stderr"])
    _no_secret_anywhere(texts, [TOKEN, WRONG, CASSANDRA_PASSWORD, RABBIT_PASSWORD])
    started = [e for e in events if e["logger"] == "abacus.serve"]
    assert started and started[0]["port"] == port and started[0]["auth"] is True, events
    uvicorn = [e for e in events if e["logger"].startswith("uvicorn")]
    assert any("Invalid HTTP request" in str(e["msg"]) for e in uvicorn), events


# ---------------------------------------------------------------- abacus job run


@pytest.fixture
def job_env(settings: Settings, services_up: object) -> Iterator[Run]:
    with isolated_run(settings, f"tlog{uuid.uuid4().hex[:8]}") as run:
        yield run


def test_job_run_in_json(job_env: Run) -> None:
    """A background `abacus job run --log-format json`: its output line is an event, its
    runner's log is JSON but for the JVM's own lines (named), no secret in the runner's log
    nor in Flink's own log beside it (the Cassandra password reaches the JVM's sink)."""
    run = job_env
    name = run.name("statistic")
    env = _cli_env(
        run.settings,
        ABACUS_KAFKA__TOPIC=run.settings.kafka.topic,
        ABACUS_KAFKA__DLQ_TOPIC=run.settings.kafka.dlq_topic,
        ABACUS_CASSANDRA__KEYSPACE_PREFIX=run.settings.cassandra.keyspace_prefix,
        ABACUS_FLINK__CHECKPOINT_INTERVAL_MS="2000",
        ABACUS_RABBITMQ__PASSWORD=RABBIT_PASSWORD,
    )
    started = subprocess.run(
        _abacus(
            "job",
            "run",
            "statistic",
            "--prefix",
            run.prefix,
            "--window-ms",
            "500",
            "--log-format",
            "json",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        run.produce([*generated_events(3, 30), "not an event", '{"event_id": 1}'])
        manager.wait_drained(run.settings, [name], 300)
    finally:
        state = manager.status(run.settings, name)
        if state is not None and state.status in manager.RUNNING:
            manager.stop(run.settings, name)
    said = json_events(started.stdout)
    assert len(said) == 1 and said[0]["logger"] == "abacus.job", started.stdout
    assert str(said[0]["msg"]).startswith(f"{name}: RUNNING (pid "), said
    if started.stderr:
        json_events(started.stderr)

    log = manager.log_path(run.settings, name).read_text()
    jvm: dict[str, list[str]] = {}
    logged = []
    for n, line in enumerate(log.splitlines(), 1):
        kind = _jvm_kind(line)
        if kind is not None:
            jvm.setdefault(kind, []).append(line)
            continue
        logged.append(line)
        assert line.startswith("{"), f"runner log line {n}: neither JSON nor the JVM's: {line!r}"
    events = json_events("\n".join(logged))
    assert any(str(e["msg"]).startswith(f"job {name} starting") for e in events), events[:5]
    flink = {
        str(path): path.read_text(errors="replace")
        for path in manager.jobs_dir(run.settings).glob(f"{name}.flink/*.log")
    }
    assert flink, "Flink's own log beside the runner's"
    _no_secret_anywhere(
        {"stdout": started.stdout, "stderr": started.stderr, "runner log": log, **flink},
        [TOKEN, CASSANDRA_PASSWORD, RABBIT_PASSWORD],
    )
    print(f"runner log: {len(events)} JSON events, the JVM's own lines: {jvm or 'none'}")


# ---------------------------------------------------------------- abacus shadow run


@pytest.fixture
def shadow_env(settings: Settings, services_up: object, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a shadow run with names of its own (keyspace prefix, so topics,
    queues and Redis keys carry its run id under its own base); what it made removed after."""
    prefix = f"tlog{uuid.uuid4().hex[:6]}_"
    config = tmp_path / "abacus.toml"
    config.write_text(
        f'[cassandra]\nkeyspace_prefix = "{prefix}"\n[flink]\ncheckpoint_interval_ms = 2000\n'
    )
    try:
        yield _cli_env(settings, ABACUS_CONFIG=str(config))
    finally:  # what its runs created (their names are whole in their overrides), and files
        for path in runs_dir(settings).glob("r*"):
            doc = _run_doc(path)
            if doc.get("base", "").startswith(f"{prefix}|"):
                installation.remove(settings, path.name, doc["overrides"])
                shutil.rmtree(path, ignore_errors=True)


SHADOW_ARGS = ["shadow", "run", "--probes-per-s", "1", "--keep", "0", "--no-services"]
SHADOW_ARGS += ["--no-live", "--format", "json", "--log-format", "json"]


def test_shadow_run_in_json(settings: Settings, shadow_env: dict[str, str]) -> None:
    """A short `abacus shadow run --log-format json --format json` (a few generated events):
    stderr, the result on stdout and every log file of the run (workers, flusher, bridge,
    both jobs' runners; the JVM's own lines aside) are events, no secret in any of them."""
    done = subprocess.run(
        _abacus(*SHADOW_ARGS, "--generate", "40", "--rate", "40"),
        env=shadow_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json_events(done.stdout)  # one line: the result, an event too
    assert result["logger"] == "abacus.shadow" and result["clean"] is True, result
    assert result["published"] >= 40 and result["audits"], result
    events = json_events(done.stderr)
    phases = [str(e["msg"]) for e in events if e["logger"] == "abacus.shadow"]
    assert "auditing" in phases and "stopping the components" in phases, phases
    _run_logs_are_events(settings, Path(result["run_dir"]), done.stdout + done.stderr)


def _run_logs_are_events(settings: Settings, run_dir: Path, output: str) -> None:
    """Every log file of the run (workers, flusher, bridge; both jobs' runners but for the
    JVM's own lines) is JSON events, and no secret is there nor in `output`."""
    doc = json.loads((run_dir / "run.json").read_text())
    logs = {str(p): p.read_text() for p in (run_dir / "logs").glob("*.log")}
    assert {Path(p).stem for p in logs} >= {"legacy-worker", "legacy-flusher", "bridge"}
    jobs = {
        str(path): path.read_text()
        for path in (manager.log_path(settings, name) for name in doc["jobs"].values())
    }
    assert len(jobs) == 2, doc["jobs"]
    for path, text in logs.items():
        assert json_events(text), path
    jvm = {}
    for path, text in jobs.items():
        jvm[path] = [line for line in text.splitlines() if _jvm_kind(line)]
        json_events("\n".join(line for line in text.splitlines() if not _jvm_kind(line)))
    secrets = [TOKEN, CASSANDRA_PASSWORD, settings.rabbitmq.password.get_secret_value()]
    _no_secret_anywhere({"output": output, **logs, **jobs}, secrets)
    print(f"the JVM's own lines in the runners' logs: {jvm}")


def test_shadow_run_interrupted_in_json(settings: Settings, shadow_env: dict[str, str]) -> None:
    """Ctrl-C while a JSON shadow run publishes: exit 130, its last event says every
    component it started is stopped, every line of its output and logs an event."""
    config = Path(shadow_env["ABACUS_CONFIG"])
    out, err = config.with_name("shadow.out"), config.with_name("shadow.err")
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            _abacus(*SHADOW_ARGS, "--generate", "100000", "--rate", "20"),
            env=shadow_env,
            stdout=stdout,
            stderr=stderr,
        )
    try:

        def publishing() -> bool:
            assert process.poll() is None, f"exit {process.returncode}: {err.read_text()[-3000:]}"
            return '"msg": "publishing"' in err.read_text()

        wait_until("the run publishes", publishing, timeout_s=600, poll_s=0.5)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)
    text = err.read_text()
    assert code == 130, text[-3000:]
    assert out.read_text() == ""
    events = json_events(text)
    assert str(events[-1]["msg"]).startswith("shadow run: interrupted; every component"), events[-1]
    started = next(e for e in events if str(e["msg"]).startswith("run r"))
    run_id = str(started["msg"]).split()[1].rstrip(":")
    _run_logs_are_events(settings, runs_dir(settings) / run_id, text)


def _run_doc(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "run.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_serve_that_cannot_start_says_why_in_json(settings: Settings, tmp_path: Path) -> None:
    """Its store unreachable, `abacus serve --log-format json` exits 2 and its error is the
    last event (logger `abacus`, ERROR), not a line of text after the driver's events."""
    with socket.socket() as s:  # a port nothing listens on: the store is unreachable
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    done = subprocess.run(
        _abacus("serve", "--port", str(closed), "--log-format", "json"),
        env=_cli_env(settings, ABACUS_CASSANDRA__PORT=str(closed)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout == ""
    events = json_events(done.stderr)
    last = events[-1]
    assert (last["logger"], last["level"]) == ("abacus", "ERROR"), last
    assert str(last["msg"]).startswith("abacus: error: cannot start: NoHostAvailable"), last
    _no_secret_anywhere({"stderr": done.stderr}, [TOKEN, CASSANDRA_PASSWORD])
