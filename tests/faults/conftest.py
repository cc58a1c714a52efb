"""The fault suite: real servers killed, paused and restarted under a running pipeline.

These tests kill servers. In CI (the `CI` environment variable set) they run on the normal
servers, which nothing else uses there. Elsewhere they run only on a private server set, so
that they never kill servers other people use: its own data dir and ports through the
settings' environment variables, e.g.

    ABACUS_SERVICES__DATA_DIR=/tmp/abacus-faults ABACUS_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:29092 \
    ABACUS_CASSANDRA__PORT=29042 ABACUS_RABBITMQ__PORT=5683 ABACUS_REDIS__PORT=26379 \
    ABACUS_FLINK__CHECKPOINT_DIR=/tmp/abacus-faults/flink/checkpoints pytest -m faults

(`abacus services install` once for that data dir, or link its lib/ to the default one's.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services import manager
from services.base import StartResult
from settings import load_settings
from settings.model import Settings

# the shared servers' data dir: the checkout's own, wherever pytest is started from (the
# settings' data dir no longer follows the current directory)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / ".abacus"


@pytest.fixture(scope="session")
def fault_settings() -> Settings:
    settings = load_settings()
    shared = settings.services.data_dir.expanduser().resolve() == DEFAULT_DATA_DIR
    if shared and not os.environ.get("CI"):
        pytest.skip(
            "the fault suite kills servers: outside CI it runs only on a private "
            "server set (ABACUS_SERVICES__DATA_DIR and the ports; see "
            "tests/faults/conftest.py)"
        )
    return settings


@pytest.fixture(scope="session")
def fault_services(fault_settings: Settings) -> list[StartResult]:
    return manager.ensure_up(fault_settings, manager.NAMES)
