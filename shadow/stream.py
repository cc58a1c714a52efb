"""The stream a shadow run publishes, and its event log.

Every line handed to the publisher is first appended to the run's event log (so the log is
exactly what was published, and the audit's truth recounts it), probes interleaved. The
stream stops early when asked (Ctrl-C) or when `--duration` is over.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from counting import Event, bucket_labels, parse_event
from counting.generate import GeneratorConfig, generate
from shadow.probes import ProbeWatcher, probe_line

DEFAULT_PROBE_TS_S = 1_764_590_400  # 2025-12-01T12:00:00Z, when the log has no valid event


def generated(n: int, seed: int) -> Iterator[str]:
    """A generated day of events (the generator's default mix, each event_id once)."""
    for event in generate(GeneratorConfig(n=n, seed=seed)):
        yield json.dumps(event, ensure_ascii=False)


def probe_timestamp(first_lines: Iterable[str | bytes]) -> int:
    """Probes count on the day of the first valid event (no extra date to audit)."""
    for line in first_lines:
        parsed = parse_event(line)
        if isinstance(parsed, Event):
            return int(parsed.timestamp)
    return DEFAULT_PROBE_TS_S


class Stream:
    def __init__(
        self,
        lines: Iterable[str | bytes],
        log_path: Path,
        run_id: str,
        probe_every: int,
        probe_ts_s: int,
        watcher: ProbeWatcher | None,
        duration_s: float | None,
        first_probe: int = 0,
    ) -> None:
        self._lines, self._log_path, self._run_id = lines, log_path, run_id
        self._probe_every, self._probe_ts_s = probe_every, probe_ts_s
        self._watcher, self._duration_s = watcher, duration_s
        self._probe_at: dict[int, int] = {}  # stream position -> probe index
        self.stop = threading.Event()
        self.handed = 0  # lines handed to the publisher
        self.published = 0  # lines the publisher is done with
        self.probes = first_probe  # the next probe's index
        self.started_at: float | None = None  # time.time() of the first publish

    def __iter__(self) -> Iterator[str | bytes]:
        start = time.monotonic()
        with self._log_path.open("ab") as log:
            for n, line in enumerate(self._lines):
                if self.stop.is_set() or (
                    self._duration_s is not None and time.monotonic() - start >= self._duration_s
                ):
                    return
                if self._watcher is not None and self._probe_every and n % self._probe_every == 0:
                    self._probe_at[self.handed] = self.probes
                    yield self._log(log, probe_line(self._run_id, self.probes, self._probe_ts_s))
                    self.probes += 1
                yield self._log(log, line)

    def _log(self, log: object, line: str | bytes) -> str | bytes:
        data = line.encode("utf-8") if isinstance(line, str) else line
        log.write(data + b"\n")  # type: ignore[attr-defined]
        log.flush()  # type: ignore[attr-defined]
        self.handed += 1
        return line

    def on_progress(self, n: int) -> None:
        """The publisher's callback, right after each publish."""
        now = time.time()
        if self.started_at is None:
            self.started_at = now
        for _ in range(n):
            probe = self._probe_at.pop(self.published, None)
            if probe is not None and self._watcher is not None:
                self._watcher.mark_published(probe, now)
            self.published += 1


def dates_touched(log_path: Path) -> list[str]:
    """The local dates (day buckets) of the valid events of the log, sorted."""
    days: set[str] = set()
    with log_path.open("rb") as stream:
        for raw in stream:
            parsed = parse_event(raw.rstrip(b"\r\n"))
            if isinstance(parsed, Event):
                days.add(bucket_labels(parsed.timestamp, parsed.timezone)[1])
    return sorted(days)
