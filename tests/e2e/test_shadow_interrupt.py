"""Ctrl-C during `abacus shadow run` stops everything the run started (legacy worker and
flusher, bridge, both Abacus jobs) and exits 130; the servers keep running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from abacus import manager
from services import procs
from settings.model import Settings
from shadow.installation import runs_dir
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def run_doc(settings: Settings, owner: int) -> dict[str, Any] | None:
    for path in runs_dir(settings).glob("*/run.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("owner_pid") == owner:
            return doc
    return None


def test_ctrl_c_stops_every_component(
    services_up: object, settings: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "abacus.toml"
    config.write_text('[cassandra]\nkeyspace_prefix = "e2eint_"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABACUS_")}
    env["ABACUS_CONFIG"] = str(config)
    abacus = Path(sys.executable).parent / "abacus"
    process = subprocess.Popen(
        [
            str(abacus),
            "shadow",
            "run",
            "--generate",
            "100000",
            "--rate",
            "20",
            "--no-services",
            "--no-live",
            "--keep",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def started() -> dict[str, Any] | None:
            assert process.poll() is None, process.communicate()[1][-3000:]
            doc = run_doc(settings, process.pid)
            if not doc or not doc.get("pids") or not doc.get("jobs"):
                return None
            states = [manager.status(settings, name) for name in doc["jobs"].values()]
            if all(s is not None and s.pid and procs.alive(s.pid) for s in states):
                return {**doc, "job_pids": [s.pid for s in states if s is not None]}
            return None

        doc = wait_until("the run's components to start", started, 600, 1.0)
        children = [*doc["pids"], *doc["job_pids"]]
        assert all(procs.alive(pid) for pid in children)
        time.sleep(5)  # publishing is under way
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
        assert process.returncode == 130, err[-3000:]
        wait_until(
            "every component to exit", lambda: not any(procs.alive(pid) for pid in children), 60
        )
        for name in doc["jobs"].values():
            state = manager.status(settings, name)
            assert state is not None and state.status not in manager.RUNNING, state
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)
