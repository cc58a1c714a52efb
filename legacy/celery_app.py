"""The legacy Celery app built from the configuration, for Celery's own tools:

    celery -A legacy.celery_app inspect ping        # also active_queues, stats, ...
    celery -A legacy.celery_app events --dump       # needs legacy.task_events on
    celery -A legacy.celery_app flower              # if Flower is installed

The settings come from where every `abacus` command reads them (ABACUS_CONFIG or
./abacus.toml, then ABACUS_* variables), so the app has the running workers' broker,
queue and remote-control exchange. Importing it connects nowhere: Celery connects when a
command first needs the broker.
"""

from __future__ import annotations

from legacy.app import make_app
from settings import load_settings

app = make_app(load_settings())
