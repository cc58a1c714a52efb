"""Check Uniques and Big Bertha: account-level increments pre-aggregated in Redis, taken in
batches by flushes.

Check Uniques: one Redis set per (company, customer) holds the account keys (every
resolution and bucket, every facet) the customer has already counted for: "a set of
actions each customer has performed", as the seed post describes it. SADD answers "first
time?" and records the answer in one step; the set's TTL slides with the customer's
activity.

Big Bertha: workers HINCRBY a pending hash (field `c<key>` the count, `u<key>` the
uniques). Both happen in one server-side script per event (`count_event`): one round trip,
atomic, and idempotent per delivery (the script records the delivery's token in the worker
slot's key and does nothing when it finds it: a retry after a timeout cannot add twice).

A flush atomically renames the pending hash to a batch (workers immediately start a new
pending hash) and takes a *lease* on it: a key holding the flusher's random token with a
TTL (`lease_s`), renewed while the flush runs. Only the lease holder works a batch; a
batch is claimed by another flusher only once its lease expired (its flusher died or lost
Redis for longer than `lease_s`). The flusher writes the batch in chunks of one Cassandra
partition and deletes the confirmed chunks' fields from the batch after each window of
concurrent writes (only while it holds the lease), so a flush that fails half-way leaves
only the unwritten rest for the next one. As in the old system, a crash between a write
and its delete doubles those chunks (at most one window), and a lost batch loses it: that
non-idempotency is what the migration removes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import cast

import redis

from counting import AccountKey
from legacy.keys import RedisKeys, decode_key

_COUNT_EVENT = """
if redis.call('GET', KEYS[4]) == ARGV[2] then return -1 end
local firsts = 0
for i = 4, #ARGV do
  local member = ARGV[i]
  redis.call('HINCRBY', KEYS[2], 'c' .. member, 1)
  if redis.call('SADD', KEYS[1], member) == 1 then
    redis.call('HINCRBY', KEYS[2], 'u' .. member, 1)
    firsts = firsts + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('SET', KEYS[4], ARGV[2], 'EX', 3600)
return firsts
"""

_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
return 1
"""

_CLAIM = """
local claimed = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('SET', ARGV[1] .. id, ARGV[2], 'NX', 'PX', ARGV[3]) then
    claimed[#claimed + 1] = id
  end
end
return claimed
"""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_CONFIRM = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

_DONE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SCAN_COUNT = 2000
DEFAULT_LEASE_S = 30.0


class LeaseLost(RuntimeError):
    """The flusher no longer holds its batch's lease: it must stop working the batch."""


Row = tuple[AccountKey, int, int]


class BigBertha:
    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self._client, self._keys = client, keys
        self._count = client.register_script(_COUNT_EVENT)
        self._take = client.register_script(_TAKE)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._confirm = client.register_script(_CONFIRM)
        self._done = client.register_script(_DONE)
        self._release = client.register_script(_RELEASE)

    # -- the worker side ------------------------------------------------------------------

    def count_event(
        self,
        uniques_key: str,
        ttl_s: int,
        slot_key: str,
        delivery: str,
        encoded_keys: Sequence[str],
        stat: str = "processed",
    ) -> int:
        """One event's Check Uniques and increments (count of every key, uniques of the
        first-time ones) and the `stat` counter, in one atomic script. Returns how many keys
        were first-time, or -1 when this delivery was already applied (a retry)."""
        keys = [uniques_key, self._keys.pending, self._keys.stats, slot_key]
        return int(self._count(keys=keys, args=[ttl_s, delivery, stat, *encoded_keys]))

    # -- the flush side -------------------------------------------------------------------

    def take(self, token: str, lease_s: float = DEFAULT_LEASE_S) -> str | None:
        """Atomically take the pending increments as a new batch leased to `token`; None
        when there are none."""
        batch_id = uuid.uuid4().hex
        keys = [
            self._keys.pending,
            self._keys.batch(batch_id),
            self._keys.batches,
            self._keys.lease(batch_id),
        ]
        taken = self._take(keys=keys, args=[time.time(), batch_id, token, _ms(lease_s)])
        return batch_id if taken else None

    def claim(self, token: str, lease_s: float = DEFAULT_LEASE_S) -> list[str]:
        """Unfinished batches whose lease expired (their flusher died), now leased to
        `token`."""
        ids = self._claim(
            keys=[self._keys.batches], args=[self._keys.lease_prefix, token, _ms(lease_s)]
        )
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def renew(self, batch_id: str, token: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Extend the lease; False when `token` no longer holds it."""
        return bool(self._renew(keys=[self._keys.lease(batch_id)], args=[token, _ms(lease_s)]))

    def read(self, batch_id: str) -> list[tuple[AccountKey, int, int]]:
        """The (key, count, uniques) increments of a batch."""
        totals: dict[str, list[int]] = {}
        for field, value in self._client.hscan_iter(self._keys.batch(batch_id), count=_SCAN_COUNT):
            text = field.decode("utf-8")
            entry = totals.setdefault(text[1:], [0, 0])
            entry[0 if text[0] == "c" else 1] += int(value)
        return [(decode_key(k), c, u) for k, (c, u) in totals.items()]

    def confirm(
        self,
        batch_id: str,
        token: str,
        encoded_keys: Sequence[str],
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        """These keys' increments are in Cassandra: delete them from the batch (and renew
        the lease). Raises LeaseLost when `token` no longer holds the batch."""
        fields = [p + e for e in encoded_keys for p in ("c", "u")]
        ok = self._confirm(
            keys=[self._keys.batch(batch_id), self._keys.lease(batch_id)],
            args=[token, _ms(lease_s), *fields],
        )
        if not ok:
            raise LeaseLost(f"batch {batch_id}: lease lost")

    def done(self, batch_id: str, token: str) -> bool:
        """Forget a batch whose increments were written (or dropped); False when `token`
        no longer holds it."""
        keys = [self._keys.batch(batch_id), self._keys.batches, self._keys.lease(batch_id)]
        return bool(self._done(keys=keys, args=[token, batch_id]))

    def release(self, batch_id: str, token: str) -> None:
        """Give a batch up (a failed flush): the next flush claims it without waiting."""
        self._release(keys=[self._keys.lease(batch_id)], args=[token])

    # -- observation ----------------------------------------------------------------------

    def pending_fields(self) -> int:
        """Hash fields not yet in Cassandra: the pending hash and every unfinished batch."""
        batches = list(self.batch_ids())
        pipe = self._client.pipeline(transaction=False)
        pipe.hlen(self._keys.pending)
        for batch_id in batches:
            pipe.hlen(self._keys.batch(batch_id))
        return sum(pipe.execute())

    def pending_keys(self) -> int:
        """Account keys not yet in Cassandra: the count fields (`c<key>`, one per key) of
        the pending hash and of every unfinished batch, read by HSCAN (never blocking Redis
        for the whole hash, as HKEYS would)."""
        hashes = [self._keys.pending, *(self._keys.batch(b) for b in self.batch_ids())]
        return sum(
            1
            for name in hashes
            for _ in self._client.hscan_iter(name, match="c*", count=_SCAN_COUNT)
        )

    def batch_ids(self) -> Iterator[str]:
        # redis-py types a reply as sync or awaitable; this client is sync: a list
        members = cast("list[bytes]", self._client.zrange(self._keys.batches, 0, -1))
        for b in members:
            yield b.decode()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
