"""One installation wherever you stand (issue 15, item 6): commands run from another
directory find the running servers, the jars and the jobs of the installation their
settings name, never a `.abacus` of the current directory.

Each command runs as an operator's shell (or cron) would run it: from an empty temporary
directory without an `abacus.toml`, no ABACUS_* variable but the one given. The shared
servers are only looked at: `services up` is run once they are known to be running, where
it must start nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abacus.jobs import state_file
from abacus.state import JobState
from services import manager
from services.paths import data_dir, lib_dir
from settings.model import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ABACUS = Path(sys.executable).parent / "abacus"


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`abacus ARGS` in `cwd` with no ABACUS_* variable but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("ABACUS_")}
    return subprocess.run(
        [str(ABACUS), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def states(done: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, int | None]]:
    """Each service's (state, pid) from `services status --format json`."""
    return {s["name"]: (s["state"], s["pid"]) for s in json.loads(done.stdout)["services"]}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty directory to run commands from (no abacus.toml, no .abacus)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


@pytest.fixture
def config(settings: Settings, tmp_path: Path) -> Path:
    """A config file in a directory of its own naming the servers' data directory relative
    to itself, as an operator's /etc/abacus/abacus.toml would."""
    home = tmp_path / "etc" / "abacus"
    home.mkdir(parents=True)
    relative = os.path.relpath(data_dir(settings), home)
    path = home / "abacus.toml"
    path.write_text(f"[services]\ndata_dir = {json.dumps(relative)}\n", encoding="utf-8")
    return path


def test_config_show_prints_the_absolute_data_dir_and_where_it_came_from(
    settings: Settings, elsewhere: Path, config: Path
) -> None:
    shown = run(elsewhere, "config", "show", ABACUS_CONFIG=str(config))
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("data_dir ="))
    expected = json.dumps(str(data_dir(settings)))
    assert line == f"  data_dir = {expected}  # services.data_dir in {config.resolve()}", (
        shown.stdout
    )
    as_json = run(elsewhere, "config", "show", "--format", "json", ABACUS_CONFIG=str(config))
    assert json.loads(as_json.stdout)["services"]["data_dir"] == str(data_dir(settings))
    assert not (elsewhere / ".abacus").exists()


def test_services_status_and_up_from_elsewhere_find_the_running_servers(
    services_up: object, settings: Settings, elsewhere: Path, config: Path
) -> None:
    before = run(elsewhere, "services", "status", "--format", "json", ABACUS_CONFIG=str(config))
    seen = states(before)
    assert before.returncode == 0, (before.returncode, seen, before.stderr)
    assert {name: state for name, (state, _) in seen.items()} == dict.fromkeys(
        manager.NAMES, "running"
    )
    # known running: `up` from here must say so and start nothing
    up = run(elsewhere, "services", "up", *manager.NAMES, ABACUS_CONFIG=str(config))
    assert up.returncode == 0, up.stderr
    for name in manager.NAMES:
        assert f"{name}: already running, pid {seen[name][1]}" in up.stderr, up.stderr
    assert f"data in {data_dir(settings)}" in up.stderr, up.stderr
    after = run(elsewhere, "services", "status", "--format", "json", ABACUS_CONFIG=str(config))
    assert states(after) == seen, (seen, states(after))
    assert not (elsewhere / ".abacus").exists()


def test_without_any_setting_a_checkout_finds_its_own_servers_from_elsewhere(
    services_up: object, settings: Settings, elsewhere: Path
) -> None:
    if data_dir(settings) != REPO / ".abacus":
        pytest.skip(f"the servers of this run are not the checkout's ({data_dir(settings)})")
    status = run(elsewhere, "services", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"data in {REPO / '.abacus'}" in status.stdout, status.stdout
    shown = run(elsewhere, "config", "show")
    assert f'data_dir = "{REPO / ".abacus"}"  # the checkout\'s own' in shown.stdout, shown.stdout


def test_another_data_dir_is_another_installation(
    services_up: object, settings: Settings, elsewhere: Path, tmp_path: Path
) -> None:
    """The control: what status reports depends on the data directory, not on the ports;
    a port held by the servers of another data dir is said so."""
    empty = tmp_path / "other-installation"
    env = {"ABACUS_SERVICES__DATA_DIR": str(empty)}
    status = run(elsewhere, "services", "status", **env)
    assert status.returncode == 3, status.stdout + status.stderr
    assert f"data in {empty}" in status.stdout, status.stdout
    report = json.loads(run(elsewhere, "services", "status", "--format", "json", **env).stdout)
    seen = {s["name"]: (s["state"], s["detail"]) for s in report["services"]}
    assert seen == {
        name: ("stopped", f"port in use by {data_dir(settings) / name}") for name in manager.NAMES
    }, seen


@pytest.fixture
def marker_job(settings: Settings) -> Iterator[str]:
    """A finished job's state file in the shared data directory (no process, no Flink
    job), removed after."""
    name = f"datadir{uuid.uuid4().hex[:10]}-statistic"
    state = state_file(settings, name)
    state.write(JobState(name, "statistic", "shadow", None, "FINISHED", time.time()))
    try:
        yield name
    finally:
        state.path.unlink(missing_ok=True)


def test_jobs_and_jars_are_found_from_elsewhere(
    settings: Settings, elsewhere: Path, config: Path, marker_job: str
) -> None:
    listed = run(elsewhere, "job", "status", "--format", "json", ABACUS_CONFIG=str(config))
    assert listed.returncode == 0, listed.stderr
    jobs: list[dict[str, Any]] = json.loads(listed.stdout)
    assert marker_job in {j["name"] for j in jobs}, [j["name"] for j in jobs]
    # what `job run` loads first: the Kafka connector, from the data directory's jars
    probe = (
        "from settings import load_settings\n"
        "from services.paths import flink_kafka_connector_jar\n"
        "print(flink_kafka_connector_jar(load_settings()))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("ABACUS_")}
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env={**clean, "PYTHONPATH": str(REPO), "ABACUS_CONFIG": str(config)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).parent == lib_dir(settings, "flink"), found.stdout
