"""Check Uniques: is this the first time this customer counts for this account key?

One Redis set per (company, customer) holds the account keys (every resolution and
bucket, every facet) the customer has already counted for: "a set of actions each
customer has performed", as the seed post describes it. SADD answers the question and
records the answer in one step; the set's TTL (`redis.uniques_ttl_s`) slides with the
customer's activity. All the SADDs of one event run in one server-side script: one round
trip, one command to encode and parse instead of 3 x (1 + F).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from legacy.keys import RedisKeys

_FIRST_TIMES = """
local added = {}
for i, member in ipairs(ARGV) do
  if i > 1 then added[i - 1] = redis.call('SADD', KEYS[1], member) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"""


class CheckUniques:
    def __init__(self, client: redis.Redis, keys: RedisKeys, ttl_s: int) -> None:
        self._keys, self._ttl_s = keys, ttl_s
        self._first_times = client.register_script(_FIRST_TIMES)

    def first_times(self, company_id: str, customer_id: str,
                    encoded_keys: Sequence[str]) -> list[bool]:
        """For each account key (encoded), whether the customer counts for it the first time."""
        name = self._keys.uniques(company_id, customer_id)
        added = self._first_times(keys=[name], args=[self._ttl_s, *encoded_keys])
        return [flag == 1 for flag in added]
