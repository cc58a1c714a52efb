"""`--log-format json` on the real servers: the bridge and a legacy worker run briefly,
every line of their output is a JSON event with the fields, and the settings' secrets
(the RabbitMQ password among them, a wrong one too) never appear in it, in either format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.status import read_status as bridge_status
from counting.corpus import tricky_lines
from legacy.app import WorkerOptions
from legacy.producer import publish_lines
from legacy.worker import WorkerProcess, start_worker
from services import procs
from settings.logs import with_log_format
from settings.model import Settings
from tests.integration import bridge_env, legacy_env
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
