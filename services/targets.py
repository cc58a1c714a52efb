"""Where Prometheus finds the project's metrics endpoints: one file per running process.

Each long-running process that serves Prometheus metrics (a legacy worker, a bridge, a
local Abacus job's Flink reporter, the read API) writes `<data_dir>/prometheus/targets/
<kind>-<name>.json` when its endpoint is up and removes it when it stops, in the format of
Prometheus' file-based service discovery (`file_sd_configs`): the local Prometheus
(services/prometheus.py) has one scrape job per kind, reading `<kind>-*.json`, and notices
new and removed files by itself. A process killed without its clean-up leaves its file, so
its target is scraped `up == 0`: the component-down alert says so, as it should, until
the file is pruned (`abacus services targets --prune`, once the death is dealt with). A
restarted component writes the same file again (its name names the component, not the
process), so a supervisor's restart leaves nothing stale.

Files are written whole (a temporary file renamed), so Prometheus never reads half of one.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from services import procs
from services.paths import data_dir
from settings.model import Settings

KINDS = ("legacy", "bridge", "flink", "serve")
ANY_ADDRESS = {"", "0.0.0.0", "::"}  # a server bound here is scraped on loopback
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def targets_dir(settings: Settings) -> Path:
    return data_dir(settings) / "prometheus" / "targets"


def address(host: str, port: int) -> str:
    """host:port as Prometheus scrapes it (a wildcard bind is scraped on loopback)."""
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the caller binds it at once: a small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ANY_ADDRESS else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def register(
    settings: Settings, kind: str, name: str, target: str, labels: dict[str, str] | None = None
) -> Path:
    """Announce `target` (host:port) as a `kind` endpoint named `name`; returns its file.
    Labels are attached to every series scraped from it (`instance` is the target)."""
    if kind not in KINDS:
        raise ValueError(f"unknown metrics kind {kind!r}: one of {', '.join(KINDS)}")
    directory = targets_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{_UNSAFE.sub('_', name)}.json"
    doc = [{"targets": [target], "labels": {"pid": str(os.getpid()), **(labels or {})}}]
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)
    return path


def unregister(path: Path) -> None:
    """Remove a target file written by this process (another's is left alone)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if doc and doc[0].get("labels", {}).get("pid") == str(os.getpid()):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Target:
    kind: str
    name: str
    path: Path
    address: str
    labels: dict[str, str]
    pid: int | None
    alive: bool  # its process runs (on this host: the data directory is per host)


def listed(settings: Settings) -> list[Target]:
    """Every target file, with whether its process still runs."""
    out = []
    directory = targets_dir(settings)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        kind, _, name = path.stem.partition("-")
        try:
            (doc,) = json.loads(path.read_text())
            labels = {str(k): str(v) for k, v in doc["labels"].items()}
            pid = int(labels["pid"])
            address = str(doc["targets"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            out.append(Target(kind, name, path, "?", {}, None, False))
            continue
        out.append(Target(kind, name, path, address, labels, pid, procs.alive(pid)))
    return out


def prune(settings: Settings) -> list[Target]:
    """Remove the files of processes that no longer run (their targets stop being
    scraped, and AbacusComponentDown stops firing for them); returns what was removed."""
    gone = [t for t in listed(settings) if not t.alive]
    for t in gone:
        t.path.unlink(missing_ok=True)
    return gone
