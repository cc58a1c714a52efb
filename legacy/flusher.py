"""The Big Bertha flush: take the pre-aggregated increments, write them to Cassandra.

Runs in the worker (a thread of its main process) or alone (`abacus legacy flush`), every
`interval_s` (default 1 s). Several flushers may run at once: a batch belongs to the one
holding its lease (`legacy.bertha`), renewed by a thread while the flush runs; another
flusher claims it only after the lease expired. A batch is written in chunks of one
Cassandra partition (one atomic counter batch each, `legacy.writer`), `write_concurrency`
chunks at a time; a window's confirmed chunks leave the batch before the next window is
sent, so a failed flush leaves only what was not written, and the failing flusher releases
the lease for the next flush.

Chaos `kill_flush` (or `arm_kill()`: SIGUSR1 to `abacus legacy flush`) makes the flusher
SIGKILL itself between a window's write and its delete: the documented crash. Before it
dies it records what it wrote unconfirmed in legacy's stats (`chaos_killed_flushes`,
`chaos_unconfirmed_keys`, `chaos_unconfirmed_count`, `chaos_unconfirmed_uniques`) and marks
the batch, so the flusher that claims the batch after its lease expired finishes it instead
of dying again; the re-written window is legacy's over-count, exactly those figures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import storage
from counting import AccountKey
from legacy import metrics
from legacy.aggregation import REDIS_TIMEOUT_S, LegacyClients, count_stats
from legacy.bertha import DEFAULT_LEASE_S, BigBertha, LeaseLost, Row
from legacy.chaos import Chaos
from legacy.keys import encode_key
from legacy.retry import RetryPolicy
from legacy.trace import Trace
from legacy.writer import partitions
from settings import Settings

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
KILL_MARKER_TTL_S = 7 * 24 * 3600  # a killed batch's marker outlives any lease and reclaim

# chaos kill: mark the batch (once) and record the unconfirmed increments, atomically
_MARK_KILL = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[2], 'chaos_killed_flushes', 1)
redis.call('HINCRBY', KEYS[2], 'chaos_unconfirmed_keys', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'chaos_unconfirmed_count', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'chaos_unconfirmed_uniques', ARGV[5])
return 1
"""


@dataclass(frozen=True, slots=True)
class FlushResult:
    batches: int = 0
    keys: int = 0
    dropped: int = 0  # batches lost on purpose (chaos)

    def __add__(self, other: FlushResult) -> FlushResult:
        return FlushResult(
            self.batches + other.batches, self.keys + other.keys, self.dropped + other.dropped
        )


class Flusher(LegacyClients):
    """Takes Big Bertha's pending increments and writes them to the legacy counters."""

    def __init__(
        self,
        settings: Settings,
        chaos: Chaos | None = None,
        trace: Trace | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        redis_timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        super().__init__(settings, redis_timeout_s)
        self._chaos, self._lease_s = chaos or Chaos(), lease_s
        self._trace = trace or Trace(None, "flusher")
        self._token = uuid.uuid4().hex  # this flusher's lease token
        self._concurrency = max(1, settings.cassandra.write_concurrency)
        # A window written to Cassandra must leave the batch, or the next flush writes it
        # again (doubled): its confirm is retried through a Redis restart or timeout for as
        # long as the lease can still be ours (the script checks the lease: LeaseLost is
        # not retried). Retrying it is idempotent (HDEL of deleted fields does nothing).
        self._confirm_retry = RetryPolicy(budget_s=lease_s)
        self._kill_armed = False
        self._mark_kill = self._redis.register_script(_MARK_KILL)

    def arm_kill(self) -> None:
        """Chaos turned on at run time (`abacus legacy flush` on SIGUSR1, the fault bench):
        the next batch this flusher writes a window of kills it as `Chaos.kill_flush` does.
        Safe in a signal handler (it only sets a flag)."""
        self._kill_armed = True

    @property
    def token(self) -> str:
        return self._token

    def flush_once(self) -> FlushResult:
        """Take the pending increments (and any batch whose lease expired) and write them."""
        t_taken = time.time()
        batch_id = self._bertha.take(self._token, self._lease_s)
        batches = self._bertha.claim(self._token, self._lease_s)
        if batch_id is not None:
            batches.insert(0, batch_id)
        result = FlushResult()
        for i, batch in enumerate(batches):
            try:
                result += self.work(batch, t_taken)
            except BaseException:
                for left in batches[i:]:  # failed or not reached: claimable by the next flush
                    with contextlib.suppress(Exception):
                        self._bertha.release(left, self._token)
                raise
        return result

    def work(self, batch: str, t_taken: float | None = None) -> FlushResult:
        """Write a batch this flusher holds the lease of, renewing it meanwhile."""
        rows = self._bertha.read(batch)
        if self._chaos.drops(batch):
            self._bertha.done(batch, self._token)  # chaos: the batch is lost
            log.warning("chaos: dropped flush batch %s (%d keys)", batch, len(rows))
            self._redis.hincrby(self._keys.stats, "chaos_dropped_flushes", 1)
            metrics.batch_flushed(dropped=True)
            return FlushResult(1, 0, 1)
        with Renewal(self._bertha, batch, self._token, self._lease_s) as lease:
            self._write(batch, rows, lease)
            lease.check()
            if not self._confirm_retry.run(
                lambda: self._bertha.done(batch, self._token), lambda _exc: None
            ):
                raise LeaseLost(f"batch {batch}: lease lost before it was done")
        self._trace.flush(batch, t_taken or time.time(), time.time())
        count_stats(self._redis, self._keys, {"flushes": 1, "flushed_keys": len(rows)})
        metrics.batch_flushed()
        return FlushResult(1, len(rows), 0)

    def _write(self, batch: str, rows: list[Row], lease: Renewal) -> None:
        """The batch to Cassandra in windows of `write_concurrency` partition chunks; each
        window's confirmed chunks leave the batch before the next window is sent. A failed
        chunk stays in the batch; the first error is raised once every window was tried."""
        parts = partitions([(k, (c, u)) for k, c, u in rows], _account_partition)
        error: BaseException | None = None
        failed = 0
        for start in range(0, len(parts), self._concurrency):
            lease.check()
            window = dict(enumerate(parts[start : start + self._concurrency], start))
            outcome = self._accounts.write(window)
            written = [k for part in outcome.written for k, _ in window[part]]
            if written:
                self._chaos_kill(batch, [r for part in outcome.written for r in window[part]])
                self._confirm(batch, [encode_key(k) for k in written])
                metrics.rows_written("account", len(written))
            if outcome.error is not None:
                error = error or outcome.error
                failed += len(window) - len(outcome.written)
        if error is not None:
            log.warning(
                "Big Bertha batch %s: %d of %d chunks failed; the written ones left the batch",
                batch,
                failed,
                len(parts),
            )
            raise error

    def _chaos_kill(self, batch: str, written: list[tuple[Any, Sequence[int]]]) -> None:
        """Chaos: SIGKILL this process now, between the write of `written` and its delete,
        once per batch, after recording what it leaves written but unconfirmed."""
        if not (self._kill_armed or self._chaos.kills_flush(batch)):
            return
        marker = self._keys.prefix + "bb:chaos-killed:" + batch
        count = sum(c for _, (c, _u) in written)
        uniques = sum(u for _, (_c, u) in written)
        marked = self._mark_kill(
            keys=[marker, self._keys.stats],
            args=[self._token, KILL_MARKER_TTL_S, len(written), count, uniques],
        )
        if not marked:
            return  # this batch killed a flusher already: this one finishes it
        log.warning(
            "chaos: killing the flusher (pid %d) after writing %d keys of batch %s "
            "(%d count, %d uniques increments) before deleting them",
            os.getpid(),
            len(written),
            batch,
            count,
            uniques,
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def _confirm(self, batch: str, fields: list[str]) -> None:
        def retrying(exc: BaseException) -> None:
            log.warning(
                "Big Bertha batch %s: confirming %d written keys failed (%s: %s); retrying",
                batch,
                len(fields),
                type(exc).__name__,
                exc,
            )

        self._confirm_retry.run(
            lambda: self._bertha.confirm(batch, self._token, fields, self._lease_s), retrying
        )

    def pending_fields(self) -> int:
        return self._bertha.pending_fields()

    def run(self, interval_s: float, stop: threading.Event) -> FlushResult:
        """Flush every `interval_s` until `stop` is set, then once more."""
        total = FlushResult()
        metrics.flusher_started()
        while not stop.wait(interval_s):
            total += self._flush_logged()
        return total + self._flush_logged()

    def _flush_logged(self) -> FlushResult:
        t0 = time.monotonic()
        try:
            result = self.flush_once()
        except Exception:  # a Redis or Cassandra hiccup: what was not written stays, released
            metrics.flushed(False, time.monotonic() - t0, had_work=True)
            log.exception("Big Bertha flush failed; what it did not write is flushed again")
            with contextlib.suppress(Exception):
                count_stats(self._redis, self._keys, {"flush_failures": 1}, RetryPolicy(budget_s=0))
            return FlushResult()
        metrics.flushed(True, time.monotonic() - t0, had_work=result.batches > 0)
        return result


def _account_partition(key: AccountKey) -> tuple[str, str, str]:
    return key.company_id, key.statistic_id, storage.period_of(key.resolution, key.bucket)


class Renewal:
    """Renews a batch's lease every third of `lease_s` in a thread while a flush works it;
    `check()` raises LeaseLost once a renewal found the lease gone."""

    def __init__(self, bertha: BigBertha, batch: str, token: str, lease_s: float) -> None:
        self._bertha, self._batch, self._token, self._lease_s = bertha, batch, token, lease_s
        self._stop = threading.Event()
        self._lost = False
        self.renewals = 0
        self._thread = threading.Thread(target=self._loop, name="bertha-lease", daemon=True)

    def __enter__(self) -> Renewal:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                if not self._bertha.renew(self._batch, self._token, self._lease_s):
                    self._lost = True
                    return
                self.renewals += 1
            except Exception:  # Redis unreachable: the lease may expire; confirm will tell
                log.warning("could not renew the lease of batch %s", self._batch)

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(f"batch {self._batch}: lease lost")


def start_flush_thread(
    settings: Settings, interval_s: float, chaos: Chaos | None = None, trace: Trace | None = None
) -> tuple[threading.Thread, threading.Event]:
    """A daemon thread flushing every `interval_s`; set the event to stop it (it flushes
    once more before it ends)."""
    stop = threading.Event()
    flusher = Flusher(settings, chaos, trace)

    def loop() -> None:
        try:
            flusher.run(interval_s, stop)
        finally:
            flusher.close()

    thread = threading.Thread(target=loop, name="big-bertha-flush", daemon=True)
    thread.start()
    return thread, stop
