"""Timing traces for the benchmark: each process appends lines to its own file.

A worker writes `task <task_id> <t_bertha> <t_done>` per task (t_bertha: its Big Bertha
increments are in Redis; t_done: its customer counters are in Cassandra); a flusher writes
`flush <batch_id> <t_taken> <t_written>`. Times are `time.time()` on one machine. Off unless
a trace directory is given; a buffered append costs microseconds, not a round trip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class Trace:
    def __init__(self, directory: Path | None, role: str) -> None:
        self._directory, self._role = directory, role
        self._file: IO[str] | None = None
        self._pid = -1

    def _out(self) -> IO[str] | None:
        if self._directory is None:
            return None
        if self._pid != os.getpid():  # a forked child writes its own file
            self._pid = os.getpid()
            self._directory.mkdir(parents=True, exist_ok=True)
            path = self._directory / f"{self._role}-{self._pid}.trace"
            self._file = path.open("a", encoding="utf-8", buffering=1)
        return self._file

    def task(self, task_id: str, t_bertha: float, t_done: float) -> None:
        out = self._out()
        if out is not None:
            out.write(f"task {task_id} {t_bertha:.6f} {t_done:.6f}\n")

    def flush(self, batch_id: str, t_taken: float, t_written: float) -> None:
        out = self._out()
        if out is not None:
            out.write(f"flush {batch_id} {t_taken:.6f} {t_written:.6f}\n")


@dataclass
class Traces:
    """Everything the processes traced: first completion of each task, and the flushes."""

    tasks: dict[str, tuple[float, float]] = field(default_factory=dict)
    flushes: list[tuple[float, float]] = field(default_factory=list)  # (taken, written)

    @classmethod
    def read(cls, directory: Path) -> Traces:
        out = cls()
        for path in sorted(directory.glob("*.trace")):
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue  # a line cut by a crash
                if parts[0] == "task":
                    times = (float(parts[2]), float(parts[3]))
                    prev = out.tasks.get(parts[1])
                    if prev is None or times[1] < prev[1]:
                        out.tasks[parts[1]] = times
                elif parts[0] == "flush":
                    out.flushes.append((float(parts[2]), float(parts[3])))
        out.flushes.sort()
        return out

    def visible_at(self) -> dict[str, float]:
        """When each task's counts were all visible in Cassandra: its customer write, and
        the write of the first flush that took its Big Bertha increments."""
        from bisect import bisect_left

        taken = [t for t, _ in self.flushes]
        out: dict[str, float] = {}
        for task_id, (t_bertha, t_done) in self.tasks.items():
            i = bisect_left(taken, t_bertha)
            if i < len(self.flushes):
                out[task_id] = max(t_done, self.flushes[i][1])
        return out
