"""Chaos knobs that make the legacy flaws visible on demand (all off by default).

- `redeliver`: a share of tasks is requeued after it was fully processed (as a broker or
  network hiccup does); legacy has no de-duplication, so those events count twice.
- `crash`: a share of tasks kills its worker process after the Redis steps, before the
  Cassandra write; the message is redelivered (acks late), so Big Bertha counts it twice.
- `drop_flush`: a share of Big Bertha flushes takes its batch and loses it.
- `kill_flush`: a share of Big Bertha batches SIGKILLs its flusher process right after the
  first window of chunks is written to Cassandra, before those chunks are deleted from the
  batch in Redis (the documented crash between the write and the delete). Each batch kills
  at most once (a Redis marker set before the kill), so the flusher that claims the batch
  once its lease expired finishes it: it writes the killed window again, and legacy
  over-counts by exactly that window's increments, recorded in legacy's stats before the
  kill (`chaos_killed_flushes`, `chaos_unconfirmed_count`, `chaos_unconfirmed_uniques`).

Selection is deterministic (a hash of the event_id or batch id), so a test knows exactly
which events were hit: `Chaos.hits(event_id, share)`.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Chaos:
    redeliver: float = 0.0
    crash: float = 0.0
    drop_flush: float = 0.0
    kill_flush: float = 0.0

    def __post_init__(self) -> None:
        for name, share in asdict(self).items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"chaos share {name} must be within [0, 1], got {share}")

    @property
    def active(self) -> bool:
        return any(asdict(self).values())

    @staticmethod
    def hits(ident: str, share: float, salt: str = "") -> bool:
        """Whether the thing named `ident` is among the `share` hit (deterministic)."""
        if share <= 0.0:
            return False
        return zlib.crc32((salt + ident).encode("utf-8")) < share * 2**32

    def redelivers(self, event_id: str) -> bool:
        return self.hits(event_id, self.redeliver, "redeliver:")

    def crashes(self, event_id: str) -> bool:
        return self.hits(event_id, self.crash, "crash:")

    def drops(self, batch_id: str) -> bool:
        return self.hits(batch_id, self.drop_flush, "drop:")

    def kills_flush(self, batch_id: str) -> bool:
        return self.hits(batch_id, self.kill_flush, "kill-flush:")
