"""Running an audit: plan the date's units, read both stores chunk by chunk, diff against
the truth, re-read every mismatch once after a settle delay, keep the detail on disk and the
record in the ops keyspace. Resumable by audit id.

The truth is recounted in a child process (compare.truth_spool) while the stores are read:
the plan starts with the stores' units (their per-date indexes), the reads go ahead of the
diff (compare.read_ahead, bounded by `RunOptions.read_ahead_rows`) until the truth arrives,
and the units only the truth has are appended to the plan then.

Memory: the rows read ahead (at most `read_ahead_rows` plus a chunk), the chunks waiting to
settle (their mismatches and their truth rows), the unit plan (ids only). The truth is held
by the child and streamed from its spool file chunk by chunk. The detail goes to
`<work_dir>/<audit_id>/detail.jsonl` as it is confirmed.

Resume: the plan (the sorted list of units) is written before the first read, and again
once the truth's units are appended; the progress (units done, detail bytes, tally) after
each confirmed chunk, atomically. A resumed audit recounts the truth from the same bounds,
appends the truth's units if the plan lacked them, truncates the detail to the recorded
length and carries on with the next chunk. The result is the same as an uninterrupted
audit's over the same data.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date as Date
from itertools import islice
from pathlib import Path
from typing import Any

from compare.audits import AuditRecord, AuditStore, now_ms
from compare.cassandra import Fetcher, StoreReader, add_profile, read_keys, read_stores
from compare.diff import Mismatch, Tally, Tolerance, Unit, diff_rows
from compare.plan import LEVELS, Plan, select, write_json
from compare.read_ahead import ReadAhead, Sides
from compare.summary import Summary
from compare.truth_spool import Selection, Source, TruthSpool
from services.paths import data_dir
from settings import Settings
from storage import KEY_WIDTH, STORES, Prepared, Row, connect, row_key
from storage.overflow import overflow_of_date

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
    # rows read but not yet diffed, at most (plus a chunk; a unit equal in both stores
    # counts once): ~330 bytes a row, so ~660 MB at most; the reads go on that far while
    # the truth is recounted (1M rows per side: the audit's peak RSS 855 MB, 736 MB at 1M)
    read_ahead_rows: int = 2_000_000
    work_dir: Path | None = None  # None: <services.data_dir>/audits


def audits_dir(settings: Settings, options: RunOptions) -> Path:
    """Where audits keep their plan, progress and detail: `options.work_dir`, else
    `<services.data_dir>/audits` (the same wherever the command runs)."""
    return options.work_dir or data_dir(settings) / "audits"


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


def run_audit(
    settings: Settings,
    date: str,
    left: str,
    right: str,
    truth: str = "none",
    *,
    level: str = "both",
    companies: Sequence[str] = (),
    statistics: Sequence[str] = (),
    include_month: bool = False,
    tolerance: Tolerance | None = None,
    allow_redeliveries: bool = False,
    top: int = 10,
    kafka_skew_s: int = 3600,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    on_candidates: Callable[[list[Mismatch]], None] | None = None,
) -> AuditResult:
    """Audit `date`: left store against right store, with the truth (none, kafka or a file).

    `on_candidates` sees each chunk's mismatches before they settle and are re-read.
    """
    params = AuditParams(
        date=date,
        left=left,
        right=right,
        truth=str(truth),
        level=level,
        companies=tuple(companies),
        statistics=tuple(statistics),
        include_month=include_month,
        tolerance=(tolerance or Tolerance()).to_dict(),
        allow_redeliveries=allow_redeliveries,
        top=top,
        kafka_skew_s=kafka_skew_s,
    )
    options = options or RunOptions()
    audit_id = f"{date}-{uuid.uuid4().hex[:12]}"
    with _Session(settings) as (session, prepared):
        if params.truth == "kafka":
            params = _with_kafka_bounds(settings, params, audit_id)
        record = AuditRecord(audit_id, date, left, right, params.truth, params.to_dict())
        audits = AuditStore(prepared, settings.cassandra)
        audits.save(record)
        spool = audits_dir(settings, options) / audit_id
        spool.mkdir(parents=True, exist_ok=True)
        return _execute(
            settings, session, prepared, audits, record, spool, options, progress, on_candidates
        )


def resume_audit(
    settings: Settings,
    audit_id: str,
    *,
    options: RunOptions | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """Carry on with an audit that was interrupted; a finished audit is returned as is."""
    options = options or RunOptions()
    spool = audits_dir(settings, options) / audit_id
    with _Session(settings) as (session, prepared):
        audits = AuditStore(prepared, settings.cassandra)
        record = audits.get(audit_id)
        if record is None:
            raise AuditError(f"no audit {audit_id!r} in the ops keyspace")
        if record.state == "done":
            return AuditResult(record, spool / "detail.jsonl")
        if not spool.is_dir():
            raise AuditError(
                f"audit {audit_id!r} has no work directory at {spool} "
                "(resume where it started, or pass its --work-dir)"
            )
        record.state, record.outcome, record.ended_at = "running", "running", None
        audits.save(record)
        return _execute(settings, session, prepared, audits, record, spool, options, progress, None)


def load_audit(settings: Settings, audit_id: str, work_dir: Path | None = None) -> AuditResult:
    """A stored audit, with its detail when the work directory is here."""
    with _Session(settings) as (_, prepared):
        record = AuditStore(prepared, settings.cassandra).get(audit_id)
    if record is None:
        raise AuditError(f"no audit {audit_id!r} in the ops keyspace")
    spool = audits_dir(settings, RunOptions(work_dir=work_dir)) / audit_id
    return AuditResult(record, spool / "detail.jsonl")


# -- the run ----------------------------------------------------------------------------


class _Session:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> tuple[Any, Prepared]:
        try:
            self.session = connect(self.settings.cassandra)
        except Exception as exc:  # NoHostAvailable and friends
            c = self.settings.cassandra
            raise AuditError(
                f"cannot reach Cassandra at {','.join(c.hosts)}:{c.port}: {type(exc).__name__}"
            ) from None
        add_profile(self.session, self.settings.cassandra)
        return self.session, Prepared(self.session)

    def __exit__(self, *exc: object) -> None:
        self.session.cluster.shutdown()


def _with_kafka_bounds(settings: Settings, params: AuditParams, audit_id: str) -> AuditParams:
    from compare import kafka

    try:
        found = kafka.bounds(
            settings.kafka,
            params.date,
            params.include_month,
            params.kafka_skew_s,
            group=f"abacus-compare-{audit_id}",
        )
    except LookupError as exc:
        raise AuditError(str(exc)) from None
    bounds = {str(p): [first, end] for p, (first, end) in sorted(found.items())}
    return AuditParams.from_dict({**params.to_dict(), "kafka_bounds": bounds})


def _truth_spool(
    settings: Settings, params: AuditParams, audit_id: str, spool: Path
) -> TruthSpool | None:
    """The truth, starting to recount in its own process (compare.truth_spool)."""
    if params.truth == "none":
        return None
    if params.truth == "kafka":
        assert params.kafka_bounds is not None
        bounds = {int(p): (first, end) for p, (first, end) in params.kafka_bounds.items()}
        source = Source(
            f"kafka:{settings.kafka.topic}",
            kafka=settings.kafka,
            bounds=bounds,
            group=f"abacus-compare-{audit_id}",
        )
    else:
        source = Source(f"file:{params.truth}", path=Path(params.truth))
    selection = Selection(
        params.date, params.include_month, params.levels, params.companies, params.statistics
    )
    return TruthSpool(source, selection, spool / "truth.spool")


def _plan(
    params: AuditParams, readers: Sequence[StoreReader], truth: TruthSpool | None, path: Path
) -> Plan:
    """The stores' units, fixed (in `path`) before the first read; the truth's own units
    are appended once it is known (`Plan.extend`)."""
    plan = Plan.load(path)
    if plan is None:
        units: set[Unit] = set()
        for reader in readers:
            units |= reader.units(params.date, params.levels)
        plan = Plan(
            select(units, params.levels, params.companies, params.statistics),
            complete=truth is None,
        )
        plan.save(path)
    if truth is not None:
        truth.send_plan(path)
    return plan


TruthRows = dict[Unit, tuple[list[Row], list[Row]]]  # a chunk's truth: rows, redelivered


@dataclass
class _Chunk:
    start: int  # index in the plan of its first unit
    units: list[Unit]
    truth: TruthRows | None  # of the units with records
    results: dict[Unit, tuple[Tally, list[Mismatch]]]
    deadline: float


def _execute(
    settings: Settings,
    session: Any,
    prepared: Prepared,
    audits: AuditStore,
    record: AuditRecord,
    spool: Path,
    options: RunOptions,
    progress: Progress | None,
    on_candidates: Callable[[list[Mismatch]], None] | None,
) -> AuditResult:
    params = AuditParams.from_dict(record.params)
    truth: TruthSpool | None = None
    try:
        truth = _truth_spool(settings, params, record.audit_id, spool)
        fetcher = Fetcher(session, options.concurrency, options.max_rps)
        readers = [
            StoreReader(prepared, settings.cassandra, name, fetcher)
            for name in (params.left, params.right)
        ]
        plan = _plan(params, readers, truth, spool / "plan.json")
        runner = _Runner(params, readers, truth, spool, options, progress, on_candidates)
        tally = runner.run(plan)
        summary = Summary(truth is not None, params.top)
        result = AuditResult(record, spool / "detail.jsonl")
        for mismatch in result.mismatches():
            summary.add(mismatch)
        record.summary = summary.to_dict(tally)
        record.summary["units"] = len(plan.units)
        record.summary["truth"] = truth.stats if truth is not None else None
        record.summary["queries"] = fetcher.queries
        # events the shadow bridge never saw (bridge.overflow): Abacus's shortfall explained
        record.summary["mirror_overflow"] = overflow_of_date(
            prepared, settings.cassandra, params.date
        )
        record.state = "done"
        record.outcome = "dirty" if summary.defects else "clean"
    except BaseException:
        record.state, record.outcome = "failed", "error"
        record.ended_at = now_ms()
        audits.save(record)
        raise
    finally:
        if truth is not None:
            truth.close()
    record.ended_at = now_ms()
    audits.save(record)
    return AuditResult(record, spool / "detail.jsonl")


class _Runner:
    """Reads, diffs and confirms the plan chunk by chunk (see the module docstring)."""

    def __init__(
        self,
        params: AuditParams,
        readers: Sequence[StoreReader],
        truth: TruthSpool | None,
        spool: Path,
        options: RunOptions,
        progress: Progress | None,
        on_candidates: Callable[[list[Mismatch]], None] | None,
    ) -> None:
        self.params, self.readers, self.truth = params, readers, truth
        self.spool, self.options = spool, options
        self.progress, self.on_candidates = progress, on_candidates
        self.tolerance = Tolerance.from_dict(params.tolerance)
        self.truth_units: Iterator[tuple[Unit, list[Row], list[Row]]] = iter(())

    def run(self, plan: Plan) -> Tally:
        state_path = self.spool / "progress.json"
        detail_path = self.spool / "detail.jsonl"
        state: dict[str, Any] = (
            json.loads(state_path.read_text("utf-8"))
            if state_path.is_file()
            else {"units_done": 0, "detail_bytes": 0, "tally": Tally().to_dict()}
        )
        tally = Tally.from_dict(state["tally"])
        detail_path.touch()
        # The stores are read (ahead, bounded) while the truth is recounted; the diff waits
        # for the truth, whose own units then join the end of the plan.
        chunks = ReadAhead(
            self._read,
            plan,
            state["units_done"],
            self.options.chunk_units,
            self.options.read_ahead_rows,
        )
        try:
            if self.truth is not None:
                extra = self.truth.wait()
                if not plan.complete:
                    chunks.extend(extra, self.spool / "plan.json")
                self.truth_units = islice(self.truth.units(), state["units_done"], None)
            with detail_path.open("r+b") as detail:
                detail.truncate(state["detail_bytes"])
                detail.seek(state["detail_bytes"])
                settling: deque[_Chunk] = deque()
                self._report(state["units_done"], len(plan.units))
                for start, units, sides in chunks:
                    settling.append(self._first_read(start, units, sides))
                    limit = self.options.max_settling_chunks
                    if chunks.ready() and len(settling) <= limit:
                        continue  # diff what was read ahead first, then confirm together
                    due = []
                    while settling and (
                        settling[0].deadline <= time.monotonic() or len(settling) > limit
                    ):
                        due.append(settling.popleft())
                    if due:
                        self._confirm(due, tally, detail, state, state_path)
                        self._report(state["units_done"], len(plan.units))
                if settling:
                    self._confirm(list(settling), tally, detail, state, state_path)
                    self._report(state["units_done"], len(plan.units))
        finally:
            chunks.close()
        return tally

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _read(self, units: list[Unit]) -> Sides:
        return read_stores(self.readers, units, self.params.date, self.params.include_month)

    def _truth_of(self, units: list[Unit]) -> TruthRows | None:
        """The truth's rows of the chunk's units: the next ones of the spool."""
        if self.truth is None:
            return None
        out: TruthRows = {}
        for unit in units:
            spooled, rows, redelivered = next(self.truth_units)
            if spooled != unit:
                raise AuditError(
                    f"the truth's spool is out of step with the plan at {unit}: "
                    "start the audit again"
                )
            out[unit] = (rows, redelivered)
        return out

    def _diff(
        self, units: list[Unit], sides: Sides, truth: TruthRows | None
    ) -> dict[Unit, tuple[Tally, list[Mismatch]]]:
        left, right = sides
        out = {}
        for unit in units:
            tally = Tally()
            rows, redelivered = truth[unit] if truth is not None else (None, None)
            records = diff_rows(
                unit,
                left[unit],
                right[unit],
                rows,
                redelivered,
                tolerance=self.tolerance,
                allow_redeliveries=self.params.allow_redeliveries,
                tally=tally,
            )
            out[unit] = (tally, records)
        return out

    def _first_read(self, start: int, units: list[Unit], sides: Sides) -> _Chunk:
        truth = self._truth_of(units)
        results = self._diff(units, sides, truth)
        candidates = [m for _, records in results.values() for m in records]
        if candidates and self.on_candidates is not None:
            self.on_candidates(candidates)
        if truth is not None:  # kept for the re-read of the units with records only
            truth = {u: truth[u] for u, (_, records) in results.items() if records}
        return _Chunk(start, units, truth, results, time.monotonic() + self.options.settle_s)

    def _reread(self, suspects: dict[Unit, tuple[_Chunk, list[Mismatch]]]) -> None:
        """Read the keys of the records again and let that read decide them (the rest of
        each unit was read in agreement: re-reading it would only double the audit's reads
        where differences cluster, in the largest units)."""
        left, right = read_keys(
            self.readers, {u: [m.key for m in records] for u, (_, records) in suspects.items()}
        )
        for unit, (chunk, records) in suspects.items():
            tally = chunk.results[unit][0]
            tally.remove(records)
            keys = {row_key(m.key) for m in records}
            truth_rows = redelivered = None
            if chunk.truth is not None:
                rows, again_redelivered = chunk.truth[unit]
                truth_rows = [r for r in rows if r[:KEY_WIDTH] in keys]
                redelivered = [r for r in again_redelivered if r[:KEY_WIDTH] in keys]
            again = diff_rows(
                unit,
                left[unit],
                right[unit],
                truth_rows,
                redelivered,
                tolerance=self.tolerance,
                allow_redeliveries=self.params.allow_redeliveries,
                tally=tally,
            )
            chunk.results[unit] = (tally, again)

    def _confirm(
        self,
        batch: list[_Chunk],
        tally: Tally,
        detail: Any,
        state: dict[str, Any],
        state_path: Path,
    ) -> None:
        """Re-read the mismatched keys of these consecutive chunks once the last has
        settled, in one concurrent read; write the chunks, then the progress, once."""
        suspects = {
            u: (chunk, chunk.results[u][1])
            for chunk in batch
            for u in chunk.units
            if chunk.results[u][1]
        }
        if suspects:
            delay = batch[-1].deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._reread(suspects)
        lines: list[str] = []
        for chunk in batch:
            for unit in chunk.units:
                unit_tally, records = chunk.results[unit]
                tally.add(unit_tally)
                lines.extend(json.dumps(m.to_record(), ensure_ascii=False) for m in records)
        if lines:
            detail.write(("\n".join(lines) + "\n").encode("utf-8"))
        detail.flush()
        os.fsync(detail.fileno())
        last = batch[-1]
        state.update(
            units_done=last.start + len(last.units),
            detail_bytes=detail.tell(),
            tally=tally.to_dict(),
        )
        write_json(state_path, state)
