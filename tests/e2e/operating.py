"""A real Prometheus and a read API beside the end-to-end shadow runs (test_shadow_run.py):
Prometheus scrapes whatever the runs' processes announce (services.targets) every 2 s."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services import manager, procs
from services.prometheus import PrometheusService
from settings import Settings
from storage.schema import apply_schema
from tests.waiting import wait_until

SCRAPE_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Prometheus:
    address: str

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://{self.address}{path}{query}", timeout=30) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("/api/v1/query", query=promql)["result"]
        return result


def prometheus(settings: Settings) -> Iterator[Prometheus]:
    """The data directory's Prometheus: started here on a free port with a fresh database
    and a 2 s scrape (stopped at the end), or the one already running (left running)."""
    s = settings.model_copy(
        update={
            "services": settings.services.model_copy(
                update={"prometheus_port": free_port(), "prometheus_scrape_s": SCRAPE_S}
            )
        }
    )
    svc = PrometheusService(s)
    running = svc.pid() is not None
    if not running:
        shutil.rmtree(svc.dir / "data", ignore_errors=True)  # no series of earlier runs
        manager.ensure_up(s, ["prometheus"])
    (status,) = manager.status(s, ["prometheus"]).services
    try:
        yield Prometheus(status.address)
    finally:
        if not running:
            manager.stop(s, ["prometheus"])


class ReadApi:
    """`abacus serve` in the data directory (so it announces itself to Prometheus) over
    `keyspace_prefix`, on a free port."""

    def __init__(self, settings: Settings, keyspace_prefix: str, log: Path) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(
            update={
                "cassandra": settings.cassandra.model_copy(
                    update={"keyspace_prefix": keyspace_prefix}
                ),
                "serve": settings.serve.model_copy(update={"port": self.port, "token": None}),
            }
        )
        apply_schema(self.settings.cassandra, ["ops"])  # the stage it follows
        self.process = procs.spawn(self.settings, ["-m", "cli", "serve"], log)
        self.log = log
        wait_until(
            f"the read API answers on {self.port} (log: {log})",
            lambda: self.get("/health") is not None,
            120,
        )

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                body: bytes = r.read()
                return body
        except OSError:
            return None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
