"""Publish-to-visible latency of each pipeline, measured in the run itself.

Probe events ride along the published stream (they are ordinary valid events, written to the
run's event log like the others, so the truth counts them too). Each probe has a counter of
its own (company `shadow-probe`, statistic `probe-<i>`); a poller reads that counter's day
total in the legacy store and in the shadow store until it appears. Latency = the moment
the counter was seen minus the moment the probe's task message was published. Seen means
the account-level count is readable: for legacy after its Big Bertha flush, for Abacus after
the statistic job's window was written.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import storage
from counting import bucket_labels
from counting.stats import percentile
from settings import Settings

PROBE_COMPANY = "shadow-probe"
STORES = ("legacy", "shadow")
POLL_S = 0.1


def probe_line(run_id: str, i: int, ts_s: int) -> str:
    return json.dumps(
        {
            "event_id": f"probe-{run_id}-{i}",
            "company_id": PROBE_COMPANY,
            "customer_id": f"probe-{i}",
            "statistic_id": _statistic(i),
            "timestamp": ts_s,
            "timezone": "UTC",
        }
    )


def _statistic(i: int) -> str:
    return f"probe-{i:05d}"


@dataclass(frozen=True, slots=True)
class Latency:
    probes: int
    seen: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class ProbeWatcher:
    """Polls each store for the probes published so far, in a thread of its own."""

    def __init__(self, settings: Settings, ts_s: int) -> None:
        self._settings = settings
        self._day = bucket_labels(ts_s, "UTC")[1]
        self._lock = threading.Lock()
        self.published: dict[int, float] = {}
        self.seen: dict[str, dict[int, float]] = {name: {} for name in STORES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-watcher", daemon=True)
        self.error: str | None = None
        self.warmup: set[int] = set()  # probes left out of the latency figures

    def start(self) -> None:
        self._thread.start()

    def mark_published(self, i: int, at_s: float) -> None:
        with self._lock:
            self.published[i] = at_s

    def pending(self) -> int:
        with self._lock:
            return sum(len(self.published) - len(seen) for seen in self.seen.values())

    def stop(self, grace_s: float) -> None:
        """Keep polling up to `grace_s` for probes not seen yet (a probe legacy lost in a
        dropped flush never shows), then stop."""
        deadline = time.monotonic() + grace_s
        while self.pending() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(POLL_S)
        self._stop.set()
        self._thread.join(timeout=30)

    def latency(self, store: str) -> Latency:
        with self._lock:
            published = dict(self.published)
            seen = dict(self.seen[store])
        counted = [i for i in published if i not in self.warmup]
        lat = [(seen[i] - published[i]) * 1000 for i in counted if i in seen]
        return Latency(
            len(counted),
            len(lat),
            _round(percentile(lat, 0.50)),
            _round(percentile(lat, 0.99)),
            _round(max(lat, default=None)),
        )

    def _run(self) -> None:
        try:
            session = storage.connect(self._settings.cassandra)
        except Exception as exc:  # the run goes on; its latency is reported as unmeasured
            self.error = f"cannot reach Cassandra: {type(exc).__name__}"
            return
        try:
            prepared = storage.Prepared(session)
            stores = {
                name: storage.CounterStore(prepared, self._settings.cassandra, name)
                for name in STORES
            }
            while not self._stop.is_set():
                self._poll(stores)
                self._stop.wait(POLL_S)
        except Exception as exc:
            self.error = f"probe poll failed: {type(exc).__name__}: {exc}"
        finally:
            session.cluster.shutdown()

    def _poll(self, stores: dict[str, storage.CounterStore]) -> None:
        with self._lock:
            todo = {
                name: [i for i in self.published if i not in self.seen[name]] for name in STORES
            }
        for name, probes in todo.items():
            for i in probes:
                rows = stores[name].read_account_range(
                    PROBE_COMPANY, _statistic(i), "day", self._day, self._day
                )
                if any(r.count > 0 for r in rows):
                    with self._lock:
                        self.seen[name][i] = time.time()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
