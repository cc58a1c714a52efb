"""Real servers for integration tests, started by the same launcher a user runs.

`services_up` starts whatever of the four is not running and leaves them running at the end:
later modules and later runs share them; CI stops them with `abacus services down`.
"""

from __future__ import annotations

import pytest

from services import manager
from services.base import StartResult
from settings import load_settings
from settings.model import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def services_up(settings: Settings) -> list[StartResult]:
    return manager.ensure_up(settings, manager.NAMES)
