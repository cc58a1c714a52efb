"""The Prometheus service's generated configuration, checked by promtool (no server)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from services import manager, targets
from services.prometheus import PrometheusService
from settings.model import BridgeSettings, ServeSettings, ServicesSettings, Settings


def settings_in(tmp_path: Path, **services: object) -> Settings:
    return Settings(
        services=ServicesSettings(data_dir=tmp_path / "data", **services),  # type: ignore[arg-type]
        serve=ServeSettings(host="0.0.0.0", port=18470, token=SecretStr("s3cret-token")),
        bridge=BridgeSettings(metrics_port=19400),
    )


def test_targets_announced_in_files_are_read_per_kind(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    path = targets.register(s, "bridge", "shadow-h/1", targets.address("0.0.0.0", 19400))
    assert path.name == "bridge-shadow-h_1.json"  # the name made safe for a file
    ((kind, address, labels),) = [(t.kind, t.address, t.labels) for t in targets.listed(s)]
    assert (kind, address, labels) == ("bridge", "127.0.0.1:19400", {"pid": str(os.getpid())})
    with pytest.raises(ValueError, match="unknown metrics kind"):
        targets.register(s, "other", "x", "127.0.0.1:1")
    targets.unregister(path)
    assert not path.exists()
    # another process's file is left alone
    path = targets.register(s, "legacy", "w1", "127.0.0.1:1")
    path.write_text(path.read_text().replace(str(os.getpid()), "1"))
    targets.unregister(path)
    assert path.exists()


def test_configuration_passes_promtool_and_keeps_the_token_out(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `abacus services install`", pytrace=False)
    svc = PrometheusService(settings_in(tmp_path, prometheus_port=29090))
    svc.dir.mkdir(parents=True)
    svc.configure()
    config_file = svc.dir / "prometheus.yml"
    config = json.loads(config_file.read_text())
    assert config["rule_files"] == [str(svc.dir / "rules" / "*.yml")]
    assert (svc.dir / "rules" / "alerts.yml").is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "legacy", "bridge", "flink", "serve"}
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:29090"]}]
    targets_dir = tmp_path / "data" / "prometheus" / "targets"
    assert targets_dir.is_dir()  # watched from the start
    assert jobs["flink"]["file_sd_configs"] == [{"files": [f"{targets_dir}/flink-*.json"]}]
    assert "authorization" not in jobs["bridge"]
    token = Path(jobs["serve"]["authorization"]["credentials_file"])
    assert token.read_text() == "s3cret-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "s3cret" not in config_file.read_text()
    assert "--web.listen-address=127.0.0.1:29090" in svc.command()
    # checks the configuration and the rule files it names
    result = subprocess.run(
        [promtool, "check", "config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout


def test_prometheus_is_in_the_default_set_only_when_asked(tmp_path: Path) -> None:
    assert manager.default_names(settings_in(tmp_path)) == manager.NAMES
    on = settings_in(tmp_path, prometheus=True)
    assert manager.default_names(on) == (*manager.NAMES, "prometheus")
    assert [svc.name for svc in manager.services(on, ["prometheus"])] == ["prometheus"]


def test_targets_of_gone_processes_are_listed_and_pruned(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    mine = targets.register(s, "serve", "8470", "127.0.0.1:8470")
    gone = targets.register(s, "bridge", "shadow-q", "127.0.0.1:19400")
    dead_pid = _ended_pid()
    gone.write_text(gone.read_text().replace(str(os.getpid()), str(dead_pid)))
    (targets.targets_dir(s) / "legacy-broken.json").write_text("not json")
    listed = {(t.kind, t.name): (t.pid, t.alive) for t in targets.listed(s)}
    assert listed == {
        ("serve", "8470"): (os.getpid(), True),
        ("bridge", "shadow-q"): (dead_pid, False),
        ("legacy", "broken"): (None, False),
    }
    pruned = {t.path.name for t in targets.prune(s)}
    assert pruned == {"bridge-shadow-q.json", "legacy-broken.json"}
    assert [p.name for p in targets.targets_dir(s).iterdir()] == [mine.name]


def _ended_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
