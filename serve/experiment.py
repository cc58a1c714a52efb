"""A live read-path experiment in the manner of GitHub's Scientist.

While the stage has a candidate store, a sampled share of the queries users make is read
from the candidate too, off the request's critical path: the request is answered from the
control, then hands (query, control answer) to a bounded queue that one background thread
works off; a full queue drops the sample and counts it (`dropped`), it never waits.

Noise floor: the worker reads the candidate, then the control again. Counters move while
events arrive, so two reads of the same store a few milliseconds apart can differ; a sample
whose two control reads disagree is `ignored` (not judged), and the share of such samples
is the noise floor. A sample is a `mismatch` only when the control agreed with itself
around the candidate's read (control, candidate, control, in that order) and the candidate
answered otherwise. serve/README.md says why this, not a delayed re-read.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve.metrics import Metrics
from serve.queries import Query

Answer = list[dict[str, Any]]
Read = Callable[[str, Query], Answer]  # (store name, query) -> answer

QUEUE_SIZE = 256  # samples waiting for the worker; beyond: dropped
SAMPLES_KEPT = 20  # mismatching queries kept with both answers (the newest)


@dataclass(frozen=True, slots=True)
class Sample:
    query: Query
    stage: str
    control: str
    candidate: str
    answer: Answer
    at_ms: int


class Experiment:
    def __init__(
        self,
        read: Read,
        share: float,
        metrics: Metrics,
        queue_size: int = QUEUE_SIZE,
        rng: random.Random | None = None,
    ) -> None:
        self.share = share
        self._read = read
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._queue: queue.Queue[Sample | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._busy = 0
        self.sampled = self.compared = self.matches = self.mismatches = 0
        self.ignored = self.dropped = self.errors = 0
        self.mismatched: deque[dict[str, Any]] = deque(maxlen=SAMPLES_KEPT)
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="experiment", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)  # after what is queued
            self._thread.join(timeout=30)
            self._thread = None

    def offer(
        self, query: Query, stage: str, control: str, candidate: str | None, answer: Answer
    ) -> bool:
        """Sample this answered query for the experiment (never blocks): True if queued."""
        if candidate is None or self.share <= 0 or self._rng.random() >= self.share:
            return False
        sample = Sample(query, stage, control, candidate, answer, int(time.time() * 1000))
        with self._lock:
            self.sampled += 1
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            self._metrics.dropped.inc()
            return False
        return True

    def idle(self) -> bool:
        """Nothing queued and nothing being compared (tests wait for this)."""
        with self._lock:
            return self._queue.empty() and self._busy == 0

    def _work(self) -> None:
        while True:
            sample = self._queue.get()
            if sample is None:
                return
            with self._lock:
                self._busy += 1
            try:
                self._judge(sample)
            finally:
                with self._lock:
                    self._busy -= 1

    def _judge(self, s: Sample) -> None:
        try:
            candidate = self._read(s.candidate, s.query)
            again = self._read(s.control, s.query)
        except Exception as exc:  # a failed read is counted, never raised into the service
            with self._lock:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._metrics.errors.inc()
            return
        self._metrics.compared.inc()
        with self._lock:
            self.compared += 1
            if again != s.answer:
                self.ignored += 1
                self._metrics.ignored.inc()
            elif candidate == s.answer:
                self.matches += 1
            else:
                self.mismatches += 1
                self._metrics.mismatches.inc()
                self.mismatched.append(
                    {
                        "at_ms": s.at_ms,
                        "stage": s.stage,
                        "query": s.query.to_dict(),
                        "control": {"store": s.control, "buckets": s.answer},
                        "candidate": {"store": s.candidate, "buckets": candidate},
                        "differs": _differs(s.answer, candidate),
                    }
                )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            judged = self.compared - self.ignored
            return {
                "share": self.share,
                "sampled": self.sampled,
                "compared": self.compared,
                "matches": self.matches,
                "mismatches": self.mismatches,
                "ignored": self.ignored,
                "dropped": self.dropped,
                "errors": self.errors,
                "last_error": self.last_error,
                "queued": self._queue.qsize(),
                # control vs control: the share of samples whose two control reads differed
                "noise_floor": self.ignored / self.compared if self.compared else None,
                "mismatch_rate": self.mismatches / judged if judged else None,
                "samples": list(self.mismatched),
            }


def _differs(control: Answer, candidate: Answer) -> list[dict[str, Any]]:
    """The buckets whose values differ (both answers list the same buckets)."""
    return [
        {"bucket": a["bucket"], "control": _values(a), "candidate": _values(b)}
        for a, b in zip(control, candidate, strict=False)
        if a != b
    ]


def _values(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "bucket"}
