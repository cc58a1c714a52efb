"""The integration fixtures (`settings`, `services_up`: the real servers, started by the
project's own launcher) serve the end-to-end tests too."""

from tests.integration.conftest import services_up, settings

__all__ = ["services_up", "settings"]
