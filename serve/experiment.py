"""A live read-path experiment in the manner of GitHub's Scientist.

While the stage has a candidate store, a sampled share of the queries users make is read
from the candidate too, off the request's critical path: the request is answered from the
control, then hands (query, control answer) to a bounded queue that one background thread
works off; a full queue drops the sample and counts it (`dropped`), it never waits.

Judging a sample, in two rounds (serve/README.md says why):
1. the worker reads the candidate, then the control again. Counters move while events
   arrive, so two reads of one store a few milliseconds apart can differ: a sample whose
   two control reads disagree is `ignored`, and the share of such samples is the noise
   floor (control vs control). Equal to a control that held still: a `match`.
2. otherwise the sample is re-checked after `settle_s` (the candidate pipeline's lag:
   the shadow jobs write every window): control, candidate, control again. The control
   moved meanwhile: `ignored`; the candidate now agrees: `lagged` (it was behind, not
   wrong); it still differs from a control that held still: a `mismatch`, kept with both
   answers.
"""

from __future__ import annotations

import heapq
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

QUEUE_SIZE = 256  # samples waiting for the worker (and re-checks waiting); beyond: dropped
SETTLE_S = 3.0  # a differing sample is re-checked this much later (shadow's lag: ~1 s)
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
        settle_s: float = SETTLE_S,
    ) -> None:
        self.share = share
        self.settle_s = settle_s
        self._queue_size = queue_size
        # re-checks due: (monotonic due time, sequence, sample, the candidate's first answer)
        self._due: list[tuple[float, int, Sample, Answer]] = []
        self._sequence = 0
        self._read = read
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._queue: queue.Queue[Sample | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._outstanding = 0  # offered, not yet judged or dropped
        self.sampled = self.compared = self.matches = self.mismatches = 0
        self.ignored = self.lagged = self.dropped = self.errors = 0
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
            self._outstanding += 1
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                self._outstanding -= 1
            self._metrics.dropped.inc()
            return False
        return True

    def idle(self) -> bool:
        """Every sample offered is judged or dropped (tests wait for this)."""
        with self._lock:
            return self._outstanding == 0

    def _work(self) -> None:
        while True:
            wait = max(0.0, self._due[0][0] - time.monotonic()) if self._due else None
            try:
                item: Sample | bool | None = self._queue.get(timeout=wait)
            except queue.Empty:
                item = False  # a re-check is due
            if item is None:
                return
            if isinstance(item, Sample):
                self._guarded(self._judge, item)
            while self._due and self._due[0][0] <= time.monotonic():
                _, _, sample, first = heapq.heappop(self._due)
                self._guarded(self._recheck, sample, first)

    def _guarded(self, judge: Callable[..., bool], *args: Any) -> None:
        """Run one round; the sample is done unless the round scheduled a re-check."""
        done = True
        try:
            done = judge(*args)
        except Exception as exc:  # a failed read is counted, never raised into the service
            with self._lock:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._metrics.errors.inc()
        if done:
            with self._lock:
                self._outstanding -= 1

    def _judge(self, s: Sample) -> bool:
        """Round 1: candidate, then control again. False: a re-check is scheduled."""
        candidate = self._read(s.candidate, s.query)
        again = self._read(s.control, s.query)
        if again != s.answer:
            self._ignored()
        elif candidate == s.answer:
            self._judged("matches")
        elif len(self._due) >= self._queue_size:
            with self._lock:
                self.dropped += 1
            self._metrics.dropped.inc()
        else:
            self._sequence += 1
            due = time.monotonic() + self.settle_s
            heapq.heappush(self._due, (due, self._sequence, s, candidate))
            return False
        return True

    def _recheck(self, s: Sample, first: Answer) -> bool:
        """Round 2, `settle_s` later: control, candidate, control again."""
        control = self._read(s.control, s.query)
        candidate = self._read(s.candidate, s.query)
        if self._read(s.control, s.query) != control:
            self._ignored()
        elif candidate == control:
            self._judged("lagged")
            self._metrics.lagged.inc()
        else:
            self._judged("mismatches")
            self._metrics.mismatches.inc()
            with self._lock:
                self.mismatched.append(
                    {
                        "at_ms": s.at_ms,
                        "stage": s.stage,
                        "query": s.query.to_dict(),
                        "control": {"store": s.control, "buckets": control},
                        "candidate": {"store": s.candidate, "buckets": candidate},
                        "differs": _differs(control, candidate),
                        "first": {"control": s.answer, "candidate": first},
                    }
                )
        return True

    def _ignored(self) -> None:
        self._judged("ignored")
        self._metrics.ignored.inc()

    def _judged(self, outcome: str) -> None:
        self._metrics.compared.inc()
        with self._lock:
            self.compared += 1
            setattr(self, outcome, getattr(self, outcome) + 1)

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
                "lagged": self.lagged,
                "dropped": self.dropped,
                "errors": self.errors,
                "last_error": self.last_error,
                "queued": self._queue.qsize(),
                "rechecks_pending": len(self._due),
                "settle_s": self.settle_s,
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
