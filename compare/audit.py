"""Running an audit: plan the date's units, read both stores chunk by chunk, diff against
the truth, re-read every mismatch once after a settle delay, keep the detail on disk and the
record in the ops keyspace. Resumable by audit id.

Memory: one chunk of units per store in flight plus the chunks waiting to settle (their
mismatches only), the unit plan (ids only), and the truth (the date's reference counts).
The detail goes to `<work_dir>/<audit_id>/detail.jsonl` as it is confirmed.

Resume: the plan (the sorted list of units) is written before the first read and the
progress (units done, detail bytes, tally) after each confirmed chunk, atomically; a
resumed audit truncates the detail to the recorded length and carries on with the next
chunk, reading the truth from the same bounds. The result is the same as an uninterrupted
audit's over the same data.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date as Date
from pathlib import Path
from typing import Any

from compare.audits import AuditRecord, AuditStore, now_ms
from compare.cassandra import (
    LEVELS,
    Fetcher,
    StoreReader,
    add_profile,
    read_keys,
    read_stores,
)
from compare.diff import Mismatch, Tally, Tolerance, Unit, diff_rows, row_key
from compare.summary import Summary
from compare.truth import Truth, file_lines, truth_of
from settings import Settings
from storage import STORES, Prepared, connect

Progress = Callable[[int, int], None]  # (units done, units planned)


class AuditError(Exception):
    """An audit that cannot run or resume; the message says what to fix."""


@dataclass(frozen=True)
class AuditParams:
    """What an audit compares: stored with it, and all a resume needs."""

    date: str
    left: str
    right: str
    truth: str = "none"  # none | kafka | a path to a JSON Lines file of hydrated events
    level: str = "both"
    companies: tuple[str, ...] = ()
    statistics: tuple[str, ...] = ()
    include_month: bool = False
    tolerance: dict[str, dict[str, float]] = field(default_factory=lambda: Tolerance().to_dict())
    allow_redeliveries: bool = False
    top: int = 10
    kafka_skew_s: int = 3600
    kafka_bounds: dict[str, list[int]] | None = None  # partition -> [first, end), fixed at start

    def __post_init__(self) -> None:
        try:
            if Date.fromisoformat(self.date).isoformat() != self.date:
                raise ValueError
        except ValueError:
            raise AuditError(f"date {self.date!r}: expected YYYY-MM-DD") from None
        for side in (self.left, self.right):
            if side not in STORES:
                raise AuditError(f"unknown store {side!r}; known: {', '.join(STORES)}")
        if self.left == self.right:
            raise AuditError(f"left and right are both {self.left!r}: name two stores")
        if self.level not in ("account", "customer", "both"):
            raise AuditError(f"level {self.level!r}: expected account, customer or both")
        if self.truth not in ("none", "kafka") and not Path(self.truth).is_file():
            raise AuditError(f"truth file not found: {self.truth}")

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS if self.level == "both" else (self.level,)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["companies"], data["statistics"] = list(self.companies), list(self.statistics)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditParams:
        data = dict(data)
        data["companies"] = tuple(data.get("companies", ()))
        data["statistics"] = tuple(data.get("statistics", ()))
        return cls(**data)


@dataclass(frozen=True)
class RunOptions:
    """How an audit runs (not part of its result)."""

    concurrency: int = 64
    max_rps: float = 5000.0  # queries per second against Cassandra; 0: unlimited
    chunk_units: int = 256
    settle_s: float = 5.0
    max_settling_chunks: int = 64
    work_dir: Path = Path(".abacus/audits")


@dataclass
class AuditResult:
    """A finished (or failed) audit: its record and where its detail is."""

    record: AuditRecord
    detail_path: Path | None

    @property
    def audit_id(self) -> str:
        return self.record.audit_id

    @property
    def params(self) -> AuditParams:
        return AuditParams.from_dict(self.record.params)

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.summary or {}

    @property
    def outcome(self) -> str:
        return self.record.outcome

    @property
    def exit_code(self) -> int:
        """0 clean (within tolerance), 1 dirty (defects), 2 error or unfinished."""
        return {"clean": 0, "dirty": 1}.get(self.record.outcome, 2)

    def has_detail(self) -> bool:
        return self.detail_path is not None and self.detail_path.is_file()

    def mismatches(self) -> Iterator[dict[str, Any]]:
        """The mismatch records, in key order (empty when the detail file is elsewhere)."""
        if not self.has_detail():
            return
        assert self.detail_path is not None
        with self.detail_path.open("r", encoding="utf-8") as stream:
            for line in stream:
                yield json.loads(line)


# -- public entry points ----------------------------------------------------------------


def run_audit(settings: Settings, date: str, left: str, right: str, truth: str = "none",
              *, level: str = "both", companies: Sequence[str] = (),
              statistics: Sequence[str] = (), include_month: bool = False,
              tolerance: Tolerance | None = None, allow_redeliveries: bool = False,
              top: int = 10, kafka_skew_s: int = 3600, options: RunOptions | None = None,
              progress: Progress | None = None,
              on_candidates: Callable[[list[Mismatch]], None] | None = None) -> AuditResult:
    """Audit `date`: left store against right store, with the truth (none, kafka or a file).

    `on_candidates` sees each chunk's mismatches before they settle and are re-read.
    """
    params = AuditParams(
        date=date, left=left, right=right, truth=str(truth), level=level,
        companies=tuple(companies), statistics=tuple(statistics), include_month=include_month,
        tolerance=(tolerance or Tolerance()).to_dict(), allow_redeliveries=allow_redeliveries,
        top=top, kafka_skew_s=kafka_skew_s)
    options = options or RunOptions()
    audit_id = f"{date}-{uuid.uuid4().hex[:12]}"
    with _Session(settings) as (session, prepared):
        if params.truth == "kafka":
            params = _with_kafka_bounds(settings, params, audit_id)
        record = AuditRecord(audit_id, date, left, right, params.truth, params.to_dict())
        audits = AuditStore(prepared, settings.cassandra)
        audits.save(record)
        spool = options.work_dir / audit_id
        spool.mkdir(parents=True, exist_ok=True)
        return _execute(settings, session, prepared, audits, record, spool, options, progress,
                        on_candidates)


def resume_audit(settings: Settings, audit_id: str, *, options: RunOptions | None = None,
                 progress: Progress | None = None) -> AuditResult:
    """Carry on with an audit that was interrupted; a finished audit is returned as is."""
    options = options or RunOptions()
    spool = options.work_dir / audit_id
    with _Session(settings) as (session, prepared):
        audits = AuditStore(prepared, settings.cassandra)
        record = audits.get(audit_id)
        if record is None:
            raise AuditError(f"no audit {audit_id!r} in the ops keyspace")
        if record.state == "done":
            return AuditResult(record, spool / "detail.jsonl")
        if not spool.is_dir():
            raise AuditError(f"audit {audit_id!r} has no work directory at {spool} "
                             "(resume where it started, or pass its --work-dir)")
        record.state, record.outcome, record.ended_at = "running", "running", None
        audits.save(record)
        return _execute(settings, session, prepared, audits, record, spool, options, progress,
                        None)


def load_audit(settings: Settings, audit_id: str, work_dir: Path | None = None) -> AuditResult:
    """A stored audit, with its detail when the work directory is here."""
    with _Session(settings) as (_, prepared):
        record = AuditStore(prepared, settings.cassandra).get(audit_id)
    if record is None:
        raise AuditError(f"no audit {audit_id!r} in the ops keyspace")
    return AuditResult(record, (work_dir or RunOptions().work_dir) / audit_id / "detail.jsonl")


# -- the run ----------------------------------------------------------------------------


class _Session:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> tuple[Any, Prepared]:
        try:
            self.session = connect(self.settings.cassandra)
        except Exception as exc:  # NoHostAvailable and friends
            c = self.settings.cassandra
            raise AuditError(f"cannot reach Cassandra at {','.join(c.hosts)}:{c.port}: "
                             f"{type(exc).__name__}") from None
        add_profile(self.session, self.settings.cassandra)
        return self.session, Prepared(self.session)

    def __exit__(self, *exc: object) -> None:
        self.session.cluster.shutdown()


def _with_kafka_bounds(settings: Settings, params: AuditParams, audit_id: str) -> AuditParams:
    from compare import kafka

    try:
        found = kafka.bounds(settings.kafka, params.date, params.include_month,
                             params.kafka_skew_s, group=f"abacus-compare-{audit_id}")
    except LookupError as exc:
        raise AuditError(str(exc)) from None
    bounds = {str(p): [first, end] for p, (first, end) in sorted(found.items())}
    return AuditParams.from_dict({**params.to_dict(), "kafka_bounds": bounds})


def _truth(settings: Settings, params: AuditParams, audit_id: str) -> Truth | None:
    if params.truth == "none":
        return None
    if params.truth == "kafka":
        from compare import kafka

        assert params.kafka_bounds is not None
        bounds = {int(p): (first, end) for p, (first, end) in params.kafka_bounds.items()}
        raws = kafka.raw_events(settings.kafka, bounds, group=f"abacus-compare-{audit_id}")
        return truth_of(raws, params.date, params.include_month,
                        f"kafka:{settings.kafka.topic}")
    return truth_of(file_lines(Path(params.truth)), params.date, params.include_month,
                    f"file:{params.truth}")


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _plan(params: AuditParams, readers: Sequence[StoreReader], truth: Truth | None,
          spool: Path) -> list[Unit]:
    path = spool / "plan.json"
    if path.is_file():
        return [(level, tuple(ids)) for level, ids in json.loads(path.read_text("utf-8"))]
    units: set[Unit] = set()
    for reader in readers:
        units |= reader.units(params.date, params.levels)
    if truth is not None:
        units |= truth.date_units()
    companies, statistics = set(params.companies), set(params.statistics)
    plan = sorted(
        (u for u in units
         if u[0] in params.levels
         and (not companies or u[1][0] in companies)
         and (not statistics or u[1][-1] in statistics)),
        key=lambda u: (LEVELS.index(u[0]), u[1]))
    _write_json(path, [[level, list(ids)] for level, ids in plan])
    return plan


@dataclass
class _Chunk:
    start: int  # index in the plan of its first unit
    units: list[Unit]
    results: dict[Unit, tuple[Tally, list[Mismatch]]]
    deadline: float


def _execute(settings: Settings, session: Any, prepared: Prepared, audits: AuditStore,
             record: AuditRecord, spool: Path, options: RunOptions,
             progress: Progress | None,
             on_candidates: Callable[[list[Mismatch]], None] | None) -> AuditResult:
    params = AuditParams.from_dict(record.params)
    try:
        truth = _truth(settings, params, record.audit_id)
        fetcher = Fetcher(session, options.concurrency, options.max_rps)
        readers = [StoreReader(prepared, settings.cassandra, name, fetcher)
                   for name in (params.left, params.right)]
        plan = _plan(params, readers, truth, spool)
        runner = _Runner(params, readers, truth, spool, options, progress, on_candidates)
        tally = runner.run(plan)
        summary = Summary(truth is not None, params.top)
        result = AuditResult(record, spool / "detail.jsonl")
        for mismatch in result.mismatches():
            summary.add(mismatch)
        record.summary = summary.to_dict(tally)
        record.summary["units"] = len(plan)
        record.summary["truth"] = truth.stats() if truth is not None else None
        record.summary["queries"] = fetcher.queries
        record.state = "done"
        record.outcome = "dirty" if summary.defects else "clean"
    except BaseException:
        record.state, record.outcome = "failed", "error"
        record.ended_at = now_ms()
        audits.save(record)
        raise
    record.ended_at = now_ms()
    audits.save(record)
    return AuditResult(record, spool / "detail.jsonl")


class _Runner:
    """Reads, diffs and confirms the plan chunk by chunk (see the module docstring)."""

    def __init__(self, params: AuditParams, readers: Sequence[StoreReader],
                 truth: Truth | None, spool: Path, options: RunOptions,
                 progress: Progress | None,
                 on_candidates: Callable[[list[Mismatch]], None] | None) -> None:
        self.params, self.readers, self.truth = params, readers, truth
        self.spool, self.options = spool, options
        self.progress, self.on_candidates = progress, on_candidates
        self.tolerance = Tolerance.from_dict(params.tolerance)

    def run(self, plan: list[Unit]) -> Tally:
        state_path = self.spool / "progress.json"
        detail_path = self.spool / "detail.jsonl"
        state = (json.loads(state_path.read_text("utf-8")) if state_path.is_file()
                 else {"units_done": 0, "detail_bytes": 0, "tally": Tally().to_dict()})
        tally = Tally.from_dict(state["tally"])
        size = self.options.chunk_units
        starts = range(state["units_done"], len(plan), size)  # any chunk size resumes
        detail_path.touch()
        with detail_path.open("r+b") as detail:
            detail.truncate(state["detail_bytes"])
            detail.seek(state["detail_bytes"])
            settling: deque[_Chunk] = deque()
            self._report(state["units_done"], len(plan))
            for start, units, sides in self._chunks(plan, starts, size):
                settling.append(self._first_read(start, units, sides))
                while settling and (settling[0].deadline <= time.monotonic()
                                    or len(settling) > self.options.max_settling_chunks):
                    self._confirm(settling.popleft(), tally, detail, state, state_path)
                    self._report(state["units_done"], len(plan))
            while settling:
                self._confirm(settling.popleft(), tally, detail, state, state_path)
                self._report(state["units_done"], len(plan))
        return tally

    def _chunks(self, plan: list[Unit], starts: range, size: int
                ) -> Iterator[tuple[int, list[Unit], list[dict[Unit, list[Any]]]]]:
        """Each chunk of the plan with both stores' rows. The next chunk is read (Cassandra
        working, the driver decoding) while the caller diffs this one: one chunk ahead at
        most, so memory stays bounded."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="compare-read") as ahead:
            reading = None
            for start in starts:
                units = plan[start:start + size]
                sides = (reading or ahead.submit(self._read, units)).result()
                following = plan[start + size:start + 2 * size]
                reading = ahead.submit(self._read, following) if following else None
                yield start, units, sides

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _read(self, units: list[Unit]) -> list[dict[Unit, list[Any]]]:
        return read_stores(self.readers, units, self.params.date, self.params.include_month)

    def _diff(self, units: list[Unit], sides: list[dict[Unit, list[Any]]]
              ) -> dict[Unit, tuple[Tally, list[Mismatch]]]:
        left, right = sides
        truth = self.truth
        out = {}
        for unit in units:
            tally = Tally()
            records = diff_rows(
                unit, left[unit], right[unit],
                truth.by_unit.get(unit, []) if truth is not None else None,
                truth.redelivered_by_unit.get(unit, []) if truth is not None else None,
                tolerance=self.tolerance, allow_redeliveries=self.params.allow_redeliveries,
                tally=tally)
            out[unit] = (tally, records)
        return out

    def _first_read(self, start: int, units: list[Unit],
                    sides: list[dict[Unit, list[Any]]]) -> _Chunk:
        results = self._diff(units, sides)
        candidates = [m for _, records in results.values() for m in records]
        if candidates and self.on_candidates is not None:
            self.on_candidates(candidates)
        return _Chunk(start, units, results, time.monotonic() + self.options.settle_s)

    def _reread(self, chunk: _Chunk, suspects: dict[Unit, list[Mismatch]]) -> None:
        """Read the keys of the records again and let that read decide them (the rest of
        each unit was read in agreement: re-reading it would only double the audit's reads
        where differences cluster, in the largest units)."""
        left, right = read_keys(self.readers, {u: [m.key for m in records]
                                               for u, records in suspects.items()})
        truth = self.truth
        for unit, records in suspects.items():
            tally = chunk.results[unit][0]
            tally.remove(records)
            keys = {row_key(m.key) for m in records}
            truth_rows = redelivered = None
            if truth is not None:
                truth_rows = [r for r in truth.by_unit.get(unit, ()) if r[:4] in keys]
                redelivered = [r for r in truth.redelivered_by_unit.get(unit, ())
                               if r[:4] in keys]
            again = diff_rows(unit, left[unit], right[unit], truth_rows, redelivered,
                              tolerance=self.tolerance,
                              allow_redeliveries=self.params.allow_redeliveries, tally=tally)
            chunk.results[unit] = (tally, again)

    def _confirm(self, chunk: _Chunk, tally: Tally, detail: Any, state: dict[str, Any],
                 state_path: Path) -> None:
        """Re-read the mismatched keys once the chunk has settled; write the chunk."""
        suspects = {u: chunk.results[u][1] for u in chunk.units if chunk.results[u][1]}
        if suspects:
            delay = chunk.deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._reread(chunk, suspects)
        lines = []
        for unit in chunk.units:
            unit_tally, records = chunk.results[unit]
            tally.add(unit_tally)
            lines.extend(json.dumps(m.to_record(), ensure_ascii=False) for m in records)
        if lines:
            detail.write(("\n".join(lines) + "\n").encode("utf-8"))
        detail.flush()
        os.fsync(detail.fileno())
        state.update(units_done=chunk.start + len(chunk.units), detail_bytes=detail.tell(),
                     tally=tally.to_dict())
        _write_json(state_path, state)
