"""The truth recounted in a child process while the audit reads the stores.

The recount (`compare.truth.truth_of`) is CPU-bound Python: in the audit's own process it
came before the first read and held the GIL against the driver. Here it runs in a child
process; the parent tells it where the plan is (`plan.json`: the stores' units, known
from their indexes long before the recount ends), and the child writes the truth's rows in
that order, followed by the units only the truth has (selected as the audit selects
units), to a spool file in the audit's work directory: pickled frames of `FRAME_UNITS`
units, each unit as `(unit, rows, redelivered rows)`. It then reports its statistics and
those extra units over the pipe and exits, freeing the truth's memory; the parent streams
the file chunk by chunk, so it never holds the truth whole either.

Both truth sources run in the child: a JSON Lines file, or Kafka within the bounds fixed
when the audit started (the same records on a resume).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compare.diff import Unit
from compare.plan import Plan, extra_units
from settings import KafkaSettings
from storage import Row

FRAME_UNITS = 512
Bounds = dict[int, tuple[int, int]]
TruthUnit = tuple[Unit, list[Row], list[Row]]  # (unit, rows, redelivered rows)


@dataclass(frozen=True)
class Source:
    """Where the truth's raw events come from: a file, or Kafka within bounds."""

    name: str  # as the audit's summary reports it (file:PATH, kafka:TOPIC)
    path: Path | None = None
    kafka: KafkaSettings | None = None
    bounds: Bounds | None = None
    group: str = ""

    def raws(self) -> Iterable[bytes | str]:
        from compare.truth import file_lines

        if self.path is not None:
            return file_lines(self.path)
        from compare import kafka

        assert self.kafka is not None and self.bounds is not None
        return kafka.raw_events(self.kafka, self.bounds, group=self.group)


@dataclass(frozen=True)
class Selection:
    """What the audit covers (compare.plan.select's arguments)."""

    date: str
    include_month: bool
    levels: tuple[str, ...]
    companies: tuple[str, ...]
    statistics: tuple[str, ...]


class TruthError(Exception):
    """The child died without a word (killed, out of memory)."""


class TruthSpool:
    """The truth of an audit, being recounted in a child process (started at once).

    The child is a plain `python -c` process (not multiprocessing's spawn, which re-runs
    the parent's main script): its stdin and stdout carry pickles, parent to child the
    source and then the plan's path, child to parent the outcome."""

    def __init__(self, source: Source, selection: Selection, path: Path) -> None:
        self.path = path
        self.stats: dict[str, Any] | None = None
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from compare.truth_spool import child; child()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._send((source, selection, path))

    def _send(self, obj: Any) -> None:
        assert self._process.stdin is not None
        try:
            pickle.dump(obj, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone: wait() says why

    def send_plan(self, path: Path) -> None:
        """Where the plan is (`compare.plan.Plan` file, saved): the child writes the truth
        in its order. (The path, not the units: a pipe holds 64 KiB, and the child's
        thread that takes them in gets the GIL between its recount's slices only, so
        sending 57k units took the audit 4 s before its first read.)"""
        self._send(str(path))

    def wait(self) -> list[Unit]:
        """Block until the truth is spooled; the units only the truth has, in plan order.
        Raises the child's error."""
        assert self._process.stdout is not None
        try:
            message = pickle.load(self._process.stdout)  # noqa: S301 (our child's pickle)
        except EOFError:
            code = self._process.wait()
            raise TruthError(
                f"the truth's recount process ended without a result (exit code {code})"
            ) from None
        if message[0] == "error":
            raise message[1]
        _, self.stats, extra = message
        self._process.wait()
        return extra

    def units(self) -> Iterator[TruthUnit]:
        """The spooled units in order (after `wait`)."""
        with self.path.open("rb") as stream:
            while True:
                try:
                    frame = pickle.load(stream)  # noqa: S301 (our child's file, our work dir)
                except EOFError:
                    return
                yield from frame

    def close(self) -> None:
        """Stop the child if it still runs; remove the spool file."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self.path.unlink(missing_ok=True)


def child() -> None:
    """The child process: recount, receive the plan, spool, report (see the module doc)."""
    from compare.truth import truth_of

    received, reply = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the reply only
    try:
        source, selection, path = pickle.load(received)  # noqa: S301 (from our parent)
        planned = _inbox(received)
        truth = truth_of(source.raws(), selection.date, selection.include_month, source.name)
        plan = Plan.load(Path(planned.result()))
        assert plan is not None, "the audit's plan file is gone"
        extra = extra_units(
            plan.units,
            truth.date_units(),
            selection.levels,
            selection.companies,
            selection.statistics,
        )
        _write(path, truth.by_unit, truth.redelivered_by_unit, [*plan.units, *extra])
        message: tuple[Any, ...] = ("done", truth.stats(), extra)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the audit is gone or stopped
        return
    except Exception as exc:
        message = ("error", _sendable(exc))
    try:
        pickle.dump(message, reply, protocol=pickle.HIGHEST_PROTOCOL)
        reply.flush()
    except BrokenPipeError:
        pass


def _inbox(received: Any) -> Future[str]:
    """The plan's path, taken in by a thread as it comes. The parent keeps the pipe open as
    long as it waits for the truth: when it closes, the audit was killed, and so is this
    process, at once, not after a recount nobody reads."""
    planned: Future[str] = Future()

    def listen() -> None:
        try:
            planned.set_result(pickle.load(received))  # noqa: S301 (from our parent)
        except Exception as exc:
            planned.set_exception(exc)
        # the raw descriptor: a thread blocked in the buffered reader would hold its lock
        # when the interpreter shuts down, a fatal error
        if not os.read(received.fileno(), 1):
            os._exit(0)

    threading.Thread(target=listen, name="plan-inbox", daemon=True).start()
    return planned


def _write(
    path: Path,
    by_unit: dict[Unit, list[Row]],
    redelivered_by_unit: dict[Unit, list[Row]],
    units: list[Unit],
) -> None:
    """The frames; pickled without a memo (`fast`: the rows share nothing worth it, and the
    memo made writing 3x slower: 2.3s against 0.7s for 1M rows, read alike)."""
    none: list[Row] = []
    with path.open("wb") as out:
        for i in range(0, len(units), FRAME_UNITS):
            pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.fast = True
            pickler.dump(
                [
                    (u, by_unit.get(u, none), redelivered_by_unit.get(u, none))
                    for u in units[i : i + FRAME_UNITS]
                ]
            )


def _sendable(exc: Exception) -> Exception:
    """The exception itself when it crosses the pipe, else a TruthError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes)
        return exc
    except Exception:
        return TruthError(f"{type(exc).__name__}: {exc}")
