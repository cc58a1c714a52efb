"""What the metrics tests share: Prometheus text parsed into samples, an endpoint scraped,
promtool run (the Debian package `prometheus`, installed by `abacus services install`)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

# (name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(address: str) -> Samples:
    """GET http://<address>/metrics, parsed."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run `abacus services install` (or `make install`),"
            " which installs the Debian package prometheus",
            pytrace=False,
        )
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)
