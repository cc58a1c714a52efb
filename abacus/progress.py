"""Drain detection: monotonic counters the operators bump in shared files (mmap).

`counted(n)` after the keep-first by event_id bumps `fanned` by the count increments of each
first delivery; the sink bumps `written` by the count increments it has written to Cassandra
(both in the JVM: abacus/jvm, `abacus.sink.Progress` writes the files, this module reads
them). A job has drained when its consumer group has no lag (offsets are committed on
checkpoint completion, and a checkpoint barrier passes `counted` only after every record
before it) and `written == fanned`: every increment counted has been written.
No sleeps, no timing guesses.

Each operator instance owns one file `<kind>-a<attempt>-s<subtask>-<pid>-<random>` (no write
races across parallel subtasks, `file_name`): its counter, an 8-byte little-endian long first,
then in `written` files the sink's total across attempts (`encode`); a reader sums the
counters. This module is the format's definition in Python; the JVM's writer
(`abacus.sink.Progress`) is checked against it by a JUnit test (`abacus.golden`).
Files live under `<data_dir>/jobs/<name>.progress/<run_id>/`, on the machine
that runs the job (a remote cluster's drain uses consumer lag alone).

Across a restart (a task failed, e.g. Cassandra went away; Flink restarts every task of the
job with the next attempt number, from the latest checkpoint): at a checkpoint every
increment fanned has been written (the sink holds nothing across one), so the counters of
the latest attempt alone balance once the restored job has caught up; a failed attempt's
stay behind, unbalanced, and are not compared. Two more kinds measure the cost:

- `reapplied`: count increments the failed attempt wrote after the checkpoint the new one
  restored (the sink's checkpointed total against the failed attempt's): written again, so
  the store is over the truth by this much (milestone 1's at-least-once excess);
- `uncertain`: count increments of writes that failed in a way that leaves unknown whether
  Cassandra applied them (timeouts, connections lost with the write in flight, writes in
  flight when a failed attempt was closed). The store may be over by up to this much more.

Files without an attempt in their name (written before attempts were counted) are attempt 0.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

_FMT = "<q"
_SIZE = struct.calcsize(_FMT)
_FILE_FMT = "<qq"  # a file as the JVM writes it: the counter, then the sink's written total
_NAME = re.compile(r"(?P<kind>[a-z]+)-a(?P<attempt>\d+)-s(?P<subtask>\d+)-")
KINDS = ("fanned", "written", "reapplied", "uncertain")


def file_name(kind: str, attempt: int, subtask: int, unique: str) -> str:
    """A counter file's name (`unique`: the writer's pid and a random suffix); `_NAME` reads
    it back. `abacus.sink.Progress` names its files so (checked by its JUnit test against
    `abacus.golden`'s vectors)."""
    return f"{kind}-a{attempt}-s{subtask}-{unique}"


def encode(counter: int, total: int = 0) -> bytes:
    """A counter file's bytes as the JVM writes them: the counter, then (in `written` files)
    the sink's total written across attempts; this module reads the counter alone."""
    return struct.pack(_FILE_FMT, counter, total)


def written_totals(directory: Path) -> dict[int, dict[int, tuple[int, int]]]:
    """subtask -> attempt -> (counter, total) of the `written` files of a run's directory."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for path in directory.glob("written-*"):
        match = _NAME.match(path.name)
        if match is None:
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if len(data) < struct.calcsize(_FILE_FMT):
            continue
        counter, total = struct.unpack_from(_FILE_FMT, data)
        out.setdefault(int(match["subtask"]), {})[int(match["attempt"])] = (counter, total)
    return out


def _counters(directory: Path) -> list[tuple[str, int, int]]:
    """(kind, attempt, value) of every counter file in a run's directory."""
    out = []
    for path in directory.glob("*-*"):
        kind = path.name.split("-", 1)[0]
        if kind not in KINDS:
            continue
        match = _NAME.match(path.name)
        attempt = int(match["attempt"]) if match else 0
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if len(data) >= _SIZE:
            out.append((kind, attempt, struct.unpack_from(_FMT, data)[0]))
    return out


def total(directory: Path, kind: str, attempt: int | None = None) -> int:
    """The sum of the counters of one kind in a run's directory (of one attempt if given)."""
    return sum(v for k, a, v in _counters(directory) if k == kind and attempt in (None, a))


@dataclass(frozen=True, slots=True)
class Progress:
    fanned: int  # of the latest attempt
    written: int  # of the latest attempt
    attempt: int = 0  # the latest attempt number seen (0: the job has not restarted)
    reapplied: int = 0  # over every attempt of the run
    uncertain: int = 0  # over every attempt of the run

    @property
    def pending(self) -> int:
        """Count increments that entered a window and are not written yet."""
        return self.fanned - self.written


def read(directory: Path) -> Progress:
    counters = _counters(directory)
    latest = max((a for k, a, _v in counters if k in ("fanned", "written")), default=0)

    def sum_of(kind: str, attempt: int | None = None) -> int:
        return sum(v for k, a, v in counters if k == kind and attempt in (None, a))

    return Progress(
        sum_of("fanned", latest),
        sum_of("written", latest),
        latest,
        sum_of("reapplied"),
        sum_of("uncertain"),
    )
