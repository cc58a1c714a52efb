"""bridge.manage and the consumer tag without servers: names, files, tags, refusals."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bridge import manage, rabbit
from settings.model import Settings


def settings_in(tmp_path: Path) -> Settings:
    s = Settings()
    return s.model_copy(
        update={"services": s.services.model_copy(update={"data_dir": tmp_path / "data"})}
    )


def test_the_consumer_tag_names_mode_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbit.socket, "gethostname", lambda: "web-1")
    assert rabbit.consumer_tag("live") == f"abacus-bridge-live-web-1-{os.getpid()}"
    monkeypatch.setattr(rabbit.socket, "gethostname", lambda: "h" * 400)
    tag = rabbit.consumer_tag("shadow")
    assert len(tag.encode()) <= 255 and tag.endswith(f"-{os.getpid()}")
    assert tag.startswith(rabbit.CONSUMER_TAG_PREFIX + "shadow-hhh")


def test_names_become_absolute_files_and_bad_ones_are_refused(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    p = manage.paths(s, "live")
    assert p.pid == (tmp_path / "data" / "bridge" / "live.pid").resolve()
    assert (p.log.name, p.status.name, p.lock.name) == ("live.log", "live.json", "live.lock")
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            manage.paths(s, bad)


def test_nothing_running_is_said_plainly(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    p = manage.paths(s, "shadow")
    p.pid.parent.mkdir(parents=True)
    p.pid.write_text("1\n")  # init: alive, but not this bridge
    state = manage.status(s, "shadow")
    assert not state["running"] and state["pid"] is None and state["stale_pid"] == 1
    stopped = manage.stop(s, "shadow")
    assert stopped["was_running"] is False and stopped["stale_pid"] == 1
    assert not p.pid.exists()
    assert manage.names(s) == []


def test_a_foreground_bridge_on_the_same_status_file_is_not_doubled(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    p = manage.paths(s, "shadow")
    p.status.parent.mkdir(parents=True)
    # what a running `bridge run --mode shadow` writes (this process stands in for it)
    p.status.write_text(json.dumps({"pid": os.getpid(), "updated_at": time.time()}))
    with pytest.raises(manage.BridgeError, match="not started by `bridge start`"):
        manage.start(s, "shadow")
    assert not p.pid.exists()
    assert manage.names(s) == ["shadow"]


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(manage.BridgeError, match="expected shadow or live"):
        manage.start(settings_in(tmp_path), "mirror")  # type: ignore[arg-type]
