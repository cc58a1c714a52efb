"""Drain detection: monotonic counters the operators bump in shared files (mmap).

`counted(n)` after the keep-first by event_id bumps `fanned` by the count increments of each
first delivery; the sink bumps `written` by the count increments it has written to Cassandra
(both in the JVM: abacus/jvm, `abacus.sink.Progress` writes the files, this module reads
them; the sink holds nothing across a checkpoint, so every increment written in a run was
fanned in that run). A job has drained when its consumer group has no lag (offsets are
committed on checkpoint completion, and a checkpoint barrier passes `counted` only after
every record before it) and `written == fanned`: every increment counted has been written.
No sleeps, no timing guesses.

Each operator instance owns one 8-byte little-endian file `<kind>-<pid>-<random>` (no write
races across parallel subtasks); a reader sums them. Files live under
`<data_dir>/jobs/<name>.progress/<run_id>/`, on the machine that runs the job (a remote
cluster's drain uses consumer lag alone).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_FMT = "<q"
_SIZE = struct.calcsize(_FMT)


def total(directory: Path, kind: str) -> int:
    """The sum of every instance's counter of one kind in a run's directory."""
    out = 0
    for path in directory.glob(f"{kind}-*"):
        data = path.read_bytes()
        if len(data) >= _SIZE:
            out += struct.unpack_from(_FMT, data)[0]
    return out


@dataclass(frozen=True, slots=True)
class Progress:
    fanned: int
    written: int

    @property
    def pending(self) -> int:
        """Count increments that entered a window and are not written yet."""
        return self.fanned - self.written


def read(directory: Path) -> Progress:
    return Progress(total(directory, "fanned"), total(directory, "written"))
