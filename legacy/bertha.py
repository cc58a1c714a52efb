"""Big Bertha: account-level increments pre-aggregated in Redis, taken in batches by flushes.

Workers HINCRBY a pending hash, one script per event (field `c<key>` the count, `u<key>`
the uniques, `<key>` the JSON of an AccountKey). A flush atomically renames the pending
hash to a batch (a Lua script: workers immediately start a new pending hash), writes the
batch to Cassandra counters, then deletes it. Batches are registered with their take
time, so a batch whose flusher died is taken over after `stale_s` and written again: as in
the old system, a crash between the Cassandra write and the delete doubles those counts,
and a lost batch loses them. That is the non-idempotency the migration removes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence

import redis

from counting import AccountKey
from legacy.keys import RedisKeys, decode_key

_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

_CLAIM_STALE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(stale) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return stale
"""

_ADD = """
for i, field in ipairs(ARGV) do
  if i > 1 then redis.call('HINCRBY', KEYS[1], field, 1) end
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""

_SCAN_COUNT = 2000


class BigBertha:
    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self._client, self._keys = client, keys
        self._add = client.register_script(_ADD)
        self._take = client.register_script(_TAKE)
        self._claim = client.register_script(_CLAIM_STALE)

    # -- the worker side ------------------------------------------------------------------

    def add(self, encoded_keys: Sequence[str], first_times: Sequence[bool],
            stat: str = "processed") -> None:
        """One event's increments (count of every key, uniques of the first-time ones) and
        the `stat` counter, in one server-side script: one round trip."""
        fields = ["c" + e for e in encoded_keys]
        fields += ["u" + e for e, first in zip(encoded_keys, first_times, strict=True) if first]
        self._add(keys=[self._keys.pending, self._keys.stats], args=[stat, *fields])

    # -- the flush side -------------------------------------------------------------------

    def take(self) -> str | None:
        """Atomically take the pending increments as a new batch; None when there are none."""
        batch_id = uuid.uuid4().hex
        keys = [self._keys.pending, self._keys.batch(batch_id), self._keys.batches]
        taken = self._take(keys=keys, args=[time.time(), batch_id])
        return batch_id if taken else None

    def claim_stale(self, stale_s: float) -> list[str]:
        """Batches taken more than `stale_s` ago and never completed (their flusher died)."""
        now = time.time()
        ids = self._claim(keys=[self._keys.batches], args=[now - stale_s, now])
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def read(self, batch_id: str) -> list[tuple[AccountKey, int, int]]:
        """The (key, count, uniques) increments of a batch."""
        totals: dict[str, list[int]] = {}
        for field, value in self._client.hscan_iter(self._keys.batch(batch_id),
                                                    count=_SCAN_COUNT):
            text = field.decode("utf-8")
            entry = totals.setdefault(text[1:], [0, 0])
            entry[0 if text[0] == "c" else 1] += int(value)
        return [(decode_key(k), c, u) for k, (c, u) in totals.items()]

    def done(self, batch_id: str) -> None:
        """Forget a batch whose increments were written (or dropped)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._keys.batch(batch_id))
        pipe.zrem(self._keys.batches, batch_id)
        pipe.execute()

    # -- observation ----------------------------------------------------------------------

    def pending_fields(self) -> int:
        """Hash fields not yet in Cassandra: the pending hash and every unfinished batch."""
        batches = [b.decode() for b in self._client.zrange(self._keys.batches, 0, -1)]
        pipe = self._client.pipeline(transaction=False)
        pipe.hlen(self._keys.pending)
        for batch_id in batches:
            pipe.hlen(self._keys.batch(batch_id))
        return sum(pipe.execute())

    def batch_ids(self) -> Iterator[str]:
        for b in self._client.zrange(self._keys.batches, 0, -1):
            yield b.decode()
