"""Check Uniques: is this the first time this customer counts for this account key?

One Redis set per (company, customer) holds the account keys (every resolution and
bucket, every facet) the customer has already counted for: "a set of actions each
customer has performed", as the seed post describes it. SADD answers the question and
records the answer in one step; the set's TTL (`redis.uniques_ttl_s`) slides with the
customer's activity. All the SADDs of one event travel in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from legacy.keys import RedisKeys


class CheckUniques:
    def __init__(self, client: redis.Redis, keys: RedisKeys, ttl_s: int) -> None:
        self._client, self._keys, self._ttl_s = client, keys, ttl_s

    def first_times(self, company_id: str, customer_id: str,
                    encoded_keys: Sequence[str]) -> list[bool]:
        """For each account key (encoded), whether the customer counts for it the first time."""
        name = self._keys.uniques(company_id, customer_id)
        pipe = self._client.pipeline(transaction=False)
        for member in encoded_keys:
            pipe.sadd(name, member)
        pipe.expire(name, self._ttl_s)
        results = pipe.execute()
        return [added == 1 for added in results[:-1]]
