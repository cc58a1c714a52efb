"""What the Abacus jobs own on this machine, removed: `teardown(settings, prefix)`.

A job name's files under `<data_dir>/jobs/` (state, log, the MiniCluster's logs, the drain
counters of its runs) and its checkpoints and savepoints. Nothing is provisioned ahead: a
job creates its files when it starts; the topics it reads are the bridge's, the stores it
writes are storage's.
"""

from __future__ import annotations

import shutil

from abacus.jobs import jobs_dir
from abacus.pipeline import KINDS, checkpoint_root, job_name
from settings import Settings


def teardown(settings: Settings, prefix: str, target: str = "shadow") -> None:
    """Remove the files and checkpoints of both jobs of `target` named with `prefix` (stop
    them first: `manager.stop_jobs`)."""
    jobs = jobs_dir(settings)
    for kind in KINDS:
        name = job_name(kind, target, prefix)
        for suffix in (".json", ".log", ".tmp"):
            (jobs / f"{name}{suffix}").unlink(missing_ok=True)
        for suffix in (".flink", ".progress"):
            shutil.rmtree(jobs / f"{name}{suffix}", ignore_errors=True)
        shutil.rmtree(checkpoint_root(settings, name), ignore_errors=True)
