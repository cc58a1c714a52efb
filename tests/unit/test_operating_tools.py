"""Celery's and Flink's own tools on our parts, without servers: the importable legacy app
carries the installation's broker and exchanges (and connects nowhere when imported), task
events follow legacy.task_events, and `job status` names a running job's Flink web UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from abacus.manager import web_ui
from abacus.state import JobState
from legacy.app import control_exchange, event_exchange, make_app
from services.procs import child_env
from settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_the_app_sends_task_events_only_when_the_setting_is_on() -> None:
    off = make_app(Settings())
    assert not off.conf.worker_send_task_events and not off.conf.task_send_sent_event
    on_settings = Settings.model_validate({"legacy": {"task_events": True}})
    on = make_app(on_settings)
    assert on.conf.worker_send_task_events and on.conf.task_send_sent_event
    assert on.conf.event_exchange == event_exchange(on_settings) != "celeryev"


def test_the_importable_app_is_built_from_the_configuration_without_connecting(
    tmp_path: Path,
) -> None:
    settings = Settings.model_validate(
        {
            "rabbitmq": {"port": 1, "legacy_queue": "ops.legacy", "password": "s3cret"},
            "legacy": {"task_events": True},
        }
    )
    probe = (
        "import json, socket\n"
        "def refuse(*a, **k): raise AssertionError('connected at import')\n"
        "socket.socket.connect = refuse\n"
        "import legacy.celery_app as m\n"
        "c = m.app.conf\n"
        "print(json.dumps([c.broker_url, c.control_exchange, c.event_exchange,"
        " c.task_default_queue, c.worker_send_task_events]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**child_env(settings), "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert json.loads(out) == [
        settings.rabbitmq.url(),
        control_exchange(settings),
        event_exchange(settings),
        "ops.legacy",
        True,
    ]


def _job(**changes: object) -> JobState:
    base = JobState(
        name="j", kind="statistic", target="abacus", pid=os.getpid(), status="RUNNING", started_at=0
    )
    return base.replace(**changes)


def test_job_status_names_a_running_jobs_web_ui() -> None:
    assert web_ui(_job(rest_port=41234)) == "http://127.0.0.1:41234/"
    assert web_ui(_job(rest_port=41234, status="RESTARTING")) == "http://127.0.0.1:41234/"
    assert web_ui(_job(remote="flink-jm:8081")) == "http://flink-jm:8081/"
    assert web_ui(_job(rest_port=None)) is None  # not known (yet)
    assert web_ui(_job(rest_port=41234, status="CANCELED")) is None  # its cluster is gone
