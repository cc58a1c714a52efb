"""What the restores of a shadow run's Abacus jobs cost: count increments written again.

A job restarted by Flink inside its process (a task failed) records it itself
(`abacus.progress`: `reapplied` and `uncertain`, per attempt). A job whose process died is
started again by the run's supervisor (`shadow.components`), a new process with its own
progress directory (`<data_dir>/jobs/<name>.progress/<started_ms>/`, the earlier ones kept:
`manager.RunOptions.keep_progress`), restored from the job's latest checkpoint. Its attempt
numbers start again at 0, so the sink cannot compare across processes: this module does,
from the counter files. Each `written` file holds the sink's total written across attempts
after its counter (`abacus/jvm/.../Progress.java`), so for each subtask:

- the dead process wrote `total` in all: the second long of its latest attempt's file;
- the new process restored at `base`: its first attempt's file's total minus its counter;

and the new process writes again what the dead one wrote after the restore point:
sum(total) - sum(base) count increments (summed over subtasks: writer state may be
redistributed). Writes in flight when the process was SIGKILLed were not recorded written
(nothing survived to record them) and may have been applied: at most the increments the dead
process had pending (its latest attempt's `fanned - written`: at a checkpoint nothing is
pending, so what entered a window after it and was not recorded written), added to
`uncertain` (measured: a statistic job SIGKILLed while its sink wrote a window had 180
pending, of which 165 had reached the store).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from abacus import manager, progress
from settings import Settings


@dataclass(frozen=True, slots=True)
class JobIncrements:
    processes: int = 0  # processes of the job in this run (1: never restarted)
    reapplied: int = 0  # written again after a restore (in-process and across processes)
    uncertain: int = 0  # writes of unknown fate (the store may be over by these more)
    reapplied_across: int = 0  # the part of `reapplied` across process restarts
    uncertain_across: int = 0  # the part of `uncertain` across process restarts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _written(directory: Path) -> dict[int, dict[int, tuple[int, int]]]:
    """subtask -> attempt -> (counter, total) of the `written` files of one process."""
    return progress.written_totals(directory)


def _process_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return sorted(dirs, key=lambda p: int(p.name))


def increments(root: Path) -> JobIncrements:
    """The restores' cost for one job name: `root` is its `<name>.progress` directory."""
    dirs = _process_dirs(root)
    reapplied = uncertain = across = unknown = 0
    previous: dict[int, dict[int, tuple[int, int]]] | None = None
    for i, directory in enumerate(dirs):
        counts = progress.read(directory)
        reapplied += counts.reapplied
        uncertain += counts.uncertain
        if i < len(dirs) - 1:  # a process that died: what it had pending, fate unknown
            unknown += max(0, counts.pending)
        written = _written(directory)
        if not written:  # the process died before its sink opened: it restored nothing
            continue
        if previous is not None:
            ended = sum(by[max(by)][1] for by in previous.values() if by)
            base = sum(by[min(by)][1] - by[min(by)][0] for by in written.values() if by)
            across += max(0, ended - base)
        previous = written
    return JobIncrements(len(dirs), reapplied + across, uncertain + unknown, across, unknown)


def job_increments(settings: Settings, name: str) -> JobIncrements:
    return increments(manager.jobs_dir(settings) / f"{name}.progress")
