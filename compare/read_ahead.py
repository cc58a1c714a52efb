"""Reading an audit's plan ahead of its diff, in a thread, with bounded memory.

The thread reads the plan chunk by chunk (Cassandra working, the driver decoding) while the
audit diffs: it keeps going as long as fewer than `max_rows` rows wait to be diffed (one
chunk at least), so reads carry on while the truth is still being recounted, and memory
stays bounded by `max_rows` plus one chunk. A unit whose rows are the same on every side
is held once. A plan still waiting for the truth's own units
(`Plan.complete` false) is read up to its end, then the thread waits for `extend()`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compare.diff import Unit
from compare.plan import Plan

FIRST_UNITS = 16  # units of the first chunk, before the rows per unit are known
CHUNK_ROWS = 50_000  # rows (all sides) a chunk aims at
Sides = list[dict[Unit, list[Any]]]  # each store's rows of each unit
Chunk = tuple[int, list[Unit], Sides]  # (index in the plan of its first unit, units, sides)


class ReadAhead:
    """The chunks of `plan` from `start`, at most `size` units each, read by `read` in a
    thread. Units differ by orders of magnitude in rows (a large company's statistic holds
    hundreds of thousands, a customer's a few): a chunk aims at `chunk_rows` rows, from the
    rows per unit of the chunk before, so that no chunk is most of the date, which would
    leave nothing to read while it is diffed."""

    def __init__(
        self,
        read: Callable[[list[Unit]], Sides],
        plan: Plan,
        start: int,
        size: int,
        max_rows: int,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self._read, self._plan, self._size, self._max_rows = read, plan, size, max_rows
        self._chunk_rows = chunk_rows
        self._units = min(size, FIRST_UNITS)  # units of the next chunk
        self._cond = threading.Condition()
        self._ready: deque[tuple[Chunk, int]] = deque()
        self._rows = 0  # rows in self._ready
        self._finished = False
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(start,), name="compare-read", daemon=True
        )
        self._thread.start()

    def extend(self, extra: list[Unit], path: Path) -> None:
        """Append the truth's own units to the plan (`Plan.extend`) and read them too."""
        with self._cond:
            self._plan.extend(extra, path)
            self._cond.notify_all()

    def ready(self) -> bool:
        """Is a chunk read and waiting?"""
        with self._cond:
            return bool(self._ready)

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            with self._cond:
                while not (self._ready or self._finished or self._error):
                    self._cond.wait()
                if self._ready:
                    chunk, rows = self._ready.popleft()
                    self._rows -= rows
                    self._cond.notify_all()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield chunk

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def _next_units(self, start: int) -> list[Unit] | None:
        """The units of the chunk at `start` once there is room for it; None at the end."""
        with self._cond:
            while not self._stopped:
                units = self._plan.units
                if start >= len(units) and self._plan.complete:
                    return None
                if start < len(units) and (not self._ready or self._rows < self._max_rows):
                    return units[start : start + self._units]
                self._cond.wait()
            return None

    def _run(self, start: int) -> None:
        try:
            while (units := self._next_units(start)) is not None:
                sides = self._read(units)
                read = sum(len(r) for side in sides for r in side.values())
                self._units = max(1, min(self._size, self._chunk_rows * len(units) // max(1, read)))
                rows = _share_equal(sides)
                with self._cond:
                    self._ready.append(((start, units, sides), rows))
                    self._rows += rows
                    self._cond.notify_all()
                start += len(units)
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._finished = True
            self._cond.notify_all()


def _share_equal(sides: Sides) -> int:
    """Let a unit's rows that are equal on every side be one list (most units, in an audit
    worth running: half the memory); the number of rows held."""
    first, *others = sides
    held = 0
    for unit, rows in first.items():
        held += len(rows)
        for side in others:
            if side[unit] == rows:
                side[unit] = rows
            else:
                held += len(side[unit])
    return held
