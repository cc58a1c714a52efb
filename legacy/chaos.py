"""Chaos knobs that make the legacy flaws visible on demand (all off by default).

- `redeliver`: a share of tasks is requeued after it was fully processed (as a broker or
  network hiccup does); legacy has no de-duplication, so those events count twice.
- `crash`: a share of tasks kills its worker process after the Redis steps, before the
  Cassandra write; the message is redelivered (acks late), so Big Bertha counts it twice.
- `drop_flush`: a share of Big Bertha flushes takes its batch and loses it.

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
