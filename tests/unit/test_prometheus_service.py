"""The Prometheus service's generated configuration, checked by promtool (no server)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from services import manager
from services.prometheus import PrometheusService, scrape_targets
from settings.model import BridgeSettings, ServeSettings, ServicesSettings, Settings


def settings_in(tmp_path: Path, **services: object) -> Settings:
    return Settings(
        services=ServicesSettings(data_dir=tmp_path / "data", **services),  # type: ignore[arg-type]
        serve=ServeSettings(host="0.0.0.0", port=18470, token=SecretStr("s3cret-token")),
        bridge=BridgeSettings(metrics_port=19400),
    )


def test_scrape_targets_itself_serve_and_the_bridge_on_loopback(tmp_path: Path) -> None:
    s = settings_in(tmp_path, prometheus_port=29090)
    assert scrape_targets(s) == {
        "prometheus": "127.0.0.1:29090",
        "serve": "127.0.0.1:18470",  # bound to every address: scraped on loopback
        "bridge": "127.0.0.1:19400",
    }
    assert "bridge" not in scrape_targets(Settings())  # no metrics port, nothing to scrape


def test_configuration_passes_promtool_and_keeps_the_token_out(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `abacus services install`", pytrace=False)
    svc = PrometheusService(settings_in(tmp_path, prometheus_port=29090))
    svc.dir.mkdir(parents=True)
    svc.configure()
    config_file = svc.dir / "prometheus.yml"
    config = json.loads(config_file.read_text())
    assert config["rule_files"] == [str(svc.dir / "rules" / "alerts.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "serve", "bridge"}
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
