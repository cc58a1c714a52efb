"""Drain detection: monotonic counters the operators bump in shared files (mmap).

The fan-out bumps `fanned` by the count increments it emits; the sink bumps `written` by the
count increments it has written to Cassandra (only for windows of this run: windows restored
from a checkpoint were fanned out by an earlier run). A job has drained when its consumer
group has no lag (offsets are committed on checkpoint completion, and a checkpoint barrier
passes the fan-out only after every record before it) and `written == fanned`: every
increment that entered a window has left it and been written. No sleeps, no timing guesses.

Each operator instance owns one 8-byte file (no write races across parallel subtasks); a
reader sums them. Files live under `<data_dir>/jobs/<name>.progress/<run_id>/`, on the
machine that runs the job (a remote cluster's drain uses consumer lag alone).
"""

from __future__ import annotations

import mmap
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

_FMT = "<q"
_SIZE = struct.calcsize(_FMT)


class Counter:
    """One operator instance's counter, in its own file (created on first use)."""

    def __init__(self, directory: str, kind: str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(self.path, "wb") as f:
            f.write(b"\0" * _SIZE)
        self._file = open(self.path, "r+b")  # noqa: SIM115 - kept open for the mmap
        self._map = mmap.mmap(self._file.fileno(), _SIZE)
        self.value = 0

    def add(self, n: int) -> None:
        self.value += n
        struct.pack_into(_FMT, self._map, 0, self.value)

    def close(self) -> None:
        self._map.close()
        self._file.close()


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
