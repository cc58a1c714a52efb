"""Where the installation's data lives (issue 15, item 6): `services.data_dir` is absolute
once the settings are loaded and never depends on the directory a command runs from.

The rules, highest first: `services.data_dir` given (ABACUS_SERVICES__DATA_DIR relative to
the current directory at load time, a TOML file's relative to the file); else the git
checkout's own `.abacus` when the code runs from one; else `.abacus` beside the config file
in effect; else `$XDG_DATA_HOME/abacus`, else `~/.local/share/abacus`.
`flink.checkpoint_dir` follows the data directory unless set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import settings.model as model
from services.paths import data_dir, lib_dir
from services.procs import settings_env
from settings.model import ServicesSettings, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ABACUS_* variable, HOME in tmp, no XDG_DATA_HOME, the current directory an empty
    one in tmp; returns that directory."""
    for key in list(os.environ):
        if key.upper().startswith("ABACUS_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The code as an installed package would see it: not in a git checkout."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(model, "_CHECKOUT", site)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_relative_env_value_is_taken_from_the_directory_at_load_time(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABACUS_SERVICES__DATA_DIR", "state/here")
    s = load_settings()
    assert s.services.data_dir == clean.resolve() / "state" / "here"
    assert s.flink.checkpoint_dir == s.services.data_dir / "flink" / "checkpoints"
    assert s.data_dir_origin == "ABACUS_SERVICES__DATA_DIR"
    monkeypatch.chdir(clean.parent)  # made absolute once: moving on changes nothing
    assert data_dir(s) == clean.resolve() / "state" / "here"


def test_a_home_relative_env_value_is_expanded(
    clean: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ABACUS_SERVICES__DATA_DIR", "~/abacus-data")
    assert load_settings().services.data_dir == (tmp_path / "home" / "abacus-data").resolve()


def test_a_relative_toml_value_is_taken_from_the_files_directory(
    clean: Path, tmp_path: Path, installed: None
) -> None:
    config = write(
        tmp_path / "etc" / "abacus.toml",
        '[services]\ndata_dir = "var/abacus"\n[flink]\ncheckpoint_dir = "chk"\n',
    )
    s = load_settings(config)
    etc = (tmp_path / "etc").resolve()
    assert s.services.data_dir == etc / "var" / "abacus"
    assert s.flink.checkpoint_dir == etc / "chk"
    assert s.data_dir_origin == f"services.data_dir in {config.resolve()}"
    assert not str(s.services.data_dir).startswith(str(clean.resolve()))


def test_the_config_file_found_in_the_current_directory_counts_the_same(
    clean: Path, installed: None
) -> None:
    write(clean / "abacus.toml", '[services]\ndata_dir = "d"\n')
    assert load_settings().services.data_dir == clean.resolve() / "d"


def test_the_environment_wins_over_the_file(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: None
) -> None:
    config = write(tmp_path / "etc" / "abacus.toml", '[services]\ndata_dir = "/from/file"\n')
    monkeypatch.setenv("ABACUS_SERVICES__DATA_DIR", str(tmp_path / "from-env"))
    s = load_settings(config)
    assert s.services.data_dir == (tmp_path / "from-env").resolve()
    assert s.data_dir_origin == "ABACUS_SERVICES__DATA_DIR"


def test_without_data_dir_it_is_beside_the_config_file(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: None
) -> None:
    config = write(tmp_path / "etc" / "abacus.toml", '[kafka]\ntopic = "t"\n')
    monkeypatch.setenv("ABACUS_CONFIG", str(config))
    s = load_settings()
    beside = (tmp_path / "etc" / ".abacus").resolve()
    assert s.services.data_dir == beside
    assert s.flink.checkpoint_dir == beside / "flink" / "checkpoints"
    assert s.data_dir_origin == f"beside the config file {config.resolve()}"
    assert lib_dir(s, "flink") == beside / "lib" / "flink"


def test_a_missing_config_file_named_by_the_environment_places_nothing_beside_it(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: None
) -> None:
    monkeypatch.setenv("ABACUS_CONFIG", str(tmp_path / "nowhere" / "abacus.toml"))
    s = load_settings()
    assert s.services.data_dir == (tmp_path / "home" / ".local" / "share" / "abacus").resolve()


def test_without_a_config_file_it_is_the_per_user_default(
    clean: Path, tmp_path: Path, installed: None
) -> None:
    s = load_settings()
    expected = (tmp_path / "home" / ".local" / "share" / "abacus").resolve()
    assert s.services.data_dir == expected
    assert s.flink.checkpoint_dir == expected / "flink" / "checkpoints"
    assert s.data_dir_origin.startswith("the per-user default")
    assert not (clean / ".abacus").exists()


def test_the_per_user_default_follows_xdg_data_home(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: None
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().services.data_dir == (tmp_path / "xdg" / "abacus").resolve()
    monkeypatch.setenv("XDG_DATA_HOME", "relative/xdg")  # not absolute: ignored (XDG spec)
    home_default = (tmp_path / "home" / ".local" / "share" / "abacus").resolve()
    assert load_settings().services.data_dir == home_default


def test_a_git_checkout_keeps_its_own_data_dir_wherever_a_command_runs(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    write(checkout / "pyproject.toml", "[project]\nname = 'x'\n")
    monkeypatch.setattr(model, "_CHECKOUT", checkout)
    s = load_settings()
    assert s.services.data_dir == checkout / ".abacus"
    assert s.data_dir_origin.startswith("the checkout's own")
    # as it always was in a checkout: a config file without data_dir does not move it
    config = write(tmp_path / "etc" / "abacus.toml", '[kafka]\ntopic = "t"\n')
    assert load_settings(config).services.data_dir == checkout / ".abacus"
    # but a data_dir set anywhere does
    write(config, '[services]\ndata_dir = "mine"\n')
    assert load_settings(config).services.data_dir == (tmp_path / "etc" / "mine").resolve()


def test_this_checkout_is_detected_as_one() -> None:
    assert model.checkout_data_dir() == REPO / ".abacus"


def test_an_explicit_checkpoint_dir_is_kept_and_made_absolute(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABACUS_FLINK__CHECKPOINT_DIR", "chk")
    monkeypatch.setenv("ABACUS_SERVICES__DATA_DIR", "/srv/abacus")
    s = load_settings()
    assert s.flink.checkpoint_dir == clean.resolve() / "chk"
    assert s.services.data_dir == Path("/srv/abacus").resolve()


def test_settings_built_in_code_keep_their_data_dir(tmp_path: Path, clean: Path) -> None:
    s = Settings(services=ServicesSettings(data_dir=tmp_path / "data"))
    assert s.services.data_dir == (tmp_path / "data").resolve()
    assert s.flink.checkpoint_dir == s.services.data_dir / "flink" / "checkpoints"
    copied = s.model_copy(
        update={"services": s.services.model_copy(update={"data_dir": tmp_path / "other"})}
    )
    assert data_dir(copied) == (tmp_path / "other").resolve()


def test_a_child_process_gets_the_resolved_paths_whatever_its_directory(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: None
) -> None:
    """The CLI's children get the settings as ABACUS_<SECTION> JSON (services.procs), no
    ABACUS_CONFIG: they must see the parent's absolute data and checkpoint directories."""
    config = write(tmp_path / "etc" / "abacus.toml", '[kafka]\ntopic = "t"\n')
    parent = load_settings(config)
    for key, value in settings_env(parent).items():
        monkeypatch.setenv(key, value)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    child = load_settings()
    assert (
        child.services.data_dir
        == parent.services.data_dir
        == tmp_path.resolve() / "etc" / ".abacus"
    )
    assert child.flink.checkpoint_dir == parent.flink.checkpoint_dir
    assert child.data_dir_origin.startswith("ABACUS_SERVICES ")


def test_audits_work_under_the_data_dir_by_default(tmp_path: Path) -> None:
    from compare.audit import RunOptions, audits_dir

    s = Settings(services=ServicesSettings(data_dir=tmp_path / "data"))
    assert audits_dir(s, RunOptions()) == (tmp_path / "data" / "audits").resolve()
    assert audits_dir(s, RunOptions(work_dir=tmp_path / "w")) == tmp_path / "w"


def test_config_show_prints_the_absolute_data_dir_and_its_origin(clean: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ABACUS_")}
    env |= {"PYTHONPATH": str(REPO), "ABACUS_SERVICES__DATA_DIR": "rel/data"}
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "config", "show"],
        env=env,
        cwd=clean,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = json.dumps(str(clean.resolve() / "rel" / "data"))
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("data_dir ="))
    assert line == f"  data_dir = {expected}  # ABACUS_SERVICES__DATA_DIR", done.stdout
    chk = next(x for x in done.stdout.splitlines() if x.strip().startswith("checkpoint_dir ="))
    assert chk == f"  checkpoint_dir = {json.dumps(json.loads(expected) + '/flink/checkpoints')}"


def test_a_stopped_server_says_who_holds_its_port(tmp_path: Path) -> None:
    """Status read with another installation's settings: not `stopped` alone."""
    from services import manager
    from services.targets import free_port

    port = free_port()
    s = Settings(services=ServicesSettings(data_dir=tmp_path / "data"))
    s = s.model_copy(update={"redis": s.redis.model_copy(update={"port": port})})
    (redis,) = manager.services(s, ["redis"])
    assert (redis.status().state, redis.status().detail) == ("stopped", None)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        found = redis.status()
    assert (found.state, found.detail) == ("stopped", "port in use, not by abacus")
