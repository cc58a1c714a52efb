"""The Big Bertha flush: take the pre-aggregated increments, write them to Cassandra.

Runs in the worker (a thread of its main process) or alone (`abacus legacy flush`), every
`interval_s` (default 1 s). Several flushers may run at once: a batch belongs to the one
that took it, until it is stale.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from legacy.aggregation import LegacyClients
from legacy.chaos import Chaos
from legacy.trace import Trace
from settings import Settings

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_STALE_S = 60.0


@dataclass(frozen=True, slots=True)
class FlushResult:
    batches: int = 0
    keys: int = 0
    dropped: int = 0  # batches lost on purpose (chaos)

    def __add__(self, other: FlushResult) -> FlushResult:
        return FlushResult(self.batches + other.batches, self.keys + other.keys,
                           self.dropped + other.dropped)


class Flusher(LegacyClients):
    """Takes Big Bertha's pending increments and writes them to the legacy counters."""

    def __init__(self, settings: Settings, chaos: Chaos | None = None,
                 trace: Trace | None = None, stale_s: float = DEFAULT_STALE_S) -> None:
        super().__init__(settings)
        self._chaos, self._stale_s = chaos or Chaos(), stale_s
        self._trace = trace or Trace(None, "flusher")

    def flush_once(self) -> FlushResult:
        """Take the pending increments (and any stale batch) and write them."""
        t_taken = time.time()
        batch_id = self._bertha.take()
        batches = self._bertha.claim_stale(self._stale_s)
        if batch_id is not None:
            batches.insert(0, batch_id)
        result = FlushResult()
        for batch in batches:
            rows = self._bertha.read(batch)
            if self._chaos.drops(batch):
                self._bertha.done(batch)  # chaos: the batch is lost
                log.warning("chaos: dropped flush batch %s (%d keys)", batch, len(rows))
                self._redis.hincrby(self._keys.stats, "chaos_dropped_flushes", 1)
                result += FlushResult(1, 0, 1)
                continue
            self._store.write_account(rows)
            self._bertha.done(batch)
            self._trace.flush(batch, t_taken, time.time())
            pipe = self._redis.pipeline(transaction=False)
            pipe.hincrby(self._keys.stats, "flushes", 1)
            pipe.hincrby(self._keys.stats, "flushed_keys", len(rows))
            pipe.execute()
            result += FlushResult(1, len(rows), 0)
        return result

    def pending_fields(self) -> int:
        return self._bertha.pending_fields()

    def run(self, interval_s: float, stop: threading.Event) -> FlushResult:
        """Flush every `interval_s` until `stop` is set, then once more."""
        total = FlushResult()
        while not stop.wait(interval_s):
            total += self._flush_logged()
        return total + self._flush_logged()

    def _flush_logged(self) -> FlushResult:
        try:
            return self.flush_once()
        except Exception:  # a Redis or Cassandra hiccup: the batch stays, retried when stale
            log.exception("Big Bertha flush failed; its batch is retried after %.0f s",
                          self._stale_s)
            return FlushResult()


def start_flush_thread(settings: Settings, interval_s: float, chaos: Chaos | None = None,
                       trace: Trace | None = None) -> tuple[threading.Thread, threading.Event]:
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
