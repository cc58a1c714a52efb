"""Prometheus from the Debian package: scrapes the project's metrics, evaluates the alerts.

Off by default (`services.prometheus`, or `abacus services up --prometheus`). It listens on
127.0.0.1:`services.prometheus_port` and scrapes every `services.prometheus_scrape_s`
(15 s): itself, and every process that announces a metrics endpoint under the data
directory (`services.targets`: legacy workers, bridges, local Abacus jobs' Flink
reporters, the read API with its bearer token when one is set), a scrape job per kind.
It loads the rules shipped with this package (services/rules/*.yml: alerts and
recordings, copied into its directory at each start). Data (the TSDB) is kept 15 days
under its directory.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from importlib import resources
from typing import Any

from services.base import Service
from services.targets import KINDS, targets_dir

HOST = "127.0.0.1"
RETENTION = "15d"
RULES = resources.files("services") / "rules"  # every *.yml there: alerts and recordings


class PrometheusService(Service):
    name = "prometheus"
    stop_grace_s = 30.0

    @property
    def host(self) -> str:
        return HOST

    def ports(self) -> dict[str, int]:
        return {"http": self.settings.services.prometheus_port}

    def missing(self) -> str | None:
        return None if shutil.which("prometheus") else "prometheus (apt package prometheus)"

    def configure(self) -> None:
        rules = self.dir / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        for old in rules.glob("*.yml"):
            old.unlink()
        for source in RULES.iterdir():
            if source.name.endswith(".yml"):
                (rules / source.name).write_text(source.read_text())
        # the targets directory exists before Prometheus starts: it watches a directory that
        # exists (one made later is only re-read every 5 minutes)
        targets_dir(self.settings).mkdir(parents=True, exist_ok=True)
        token = self.dir / "serve.token"
        token.unlink(missing_ok=True)
        jobs: list[dict[str, Any]] = [
            {"job_name": "prometheus", "static_configs": [{"targets": [self.address]}]}
        ]
        # the processes that announce themselves: legacy workers, bridges, local jobs, the
        # read API (services.targets), a scrape job per kind
        for kind in KINDS:
            files = [str(targets_dir(self.settings) / f"{kind}-*.json")]
            scrape: dict[str, Any] = {"job_name": kind, "file_sd_configs": [{"files": files}]}
            if kind == "serve" and self.settings.serve.token is not None:
                # in a file of mode 0600, never in the configuration Prometheus shows
                token.touch(mode=0o600)
                token.write_text(self.settings.serve.token.get_secret_value())
                scrape["authorization"] = {"type": "Bearer", "credentials_file": str(token)}
            jobs.append(scrape)
        every = f"{round(self.settings.services.prometheus_scrape_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(rules / "*.yml")],
            "scrape_configs": jobs,
        }
        # JSON is YAML: the file Prometheus reads, with absolute paths
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=1) + "\n")

    def command(self) -> list[str]:
        return [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={self.address}",
        ]

    def probe(self) -> str:
        """Ready (`/-/ready`: the TSDB is open, the rules loaded) and its version."""
        ready = _get(f"http://{self.address}/-/ready")
        if not ready.startswith(b"Prometheus"):
            raise RuntimeError(f"/-/ready answered {ready[:80]!r}")
        doc = json.loads(_get(f"http://{self.address}/api/v1/status/buildinfo"))
        return str(doc["data"]["version"])


def _get(url: str) -> bytes:
    """GET an http:// URL of ours (an HTTP error status raises)."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http URL: {url}")
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http only)
        body: bytes = response.read()
    return body
