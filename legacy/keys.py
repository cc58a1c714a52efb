"""Where legacy keeps its state in Redis: every key under one prefix.

The prefix is `settings.redis.prefix + "legacy:"`, so a test (or a second installation
sharing a Redis) isolates itself by its own `redis.prefix`. Counter keys are encoded as
JSON arrays (`counting.key_id`): unambiguous for any facet value (a value may hold any
character).
"""

from __future__ import annotations

from dataclasses import dataclass

from counting import AccountKey, account_key_of_id, key_id
from settings import RedisSettings

SUB_PREFIX = "legacy:"


def encode_key(key: AccountKey) -> str:
    """The text of an account key in Redis (a set member, a hash field): its key_id."""
    return key_id(key)


def decode_key(text: str | bytes) -> AccountKey:
    return account_key_of_id(text)


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The names of legacy's Redis keys."""

    prefix: str

    @classmethod
    def of(cls, settings: RedisSettings) -> RedisKeys:
        return cls(settings.prefix + SUB_PREFIX)

    def uniques(self, company_id: str, customer_id: str) -> str:
        """Check Uniques: the set of account keys this customer already counted for."""
        return self.uniques_prefix + key_id((company_id, customer_id))

    @property
    def uniques_prefix(self) -> str:
        """What every Check Uniques key starts with (then the (company, customer) key_id)."""
        return self.prefix + "u:"

    @property
    def uniques_pattern(self) -> str:
        """A SCAN pattern matching every Check Uniques set of this prefix."""
        return _glob_escape(self.uniques_prefix) + "*"

    @property
    def consuming(self) -> str:
        """The hand-over flag (`legacy.handover`): "off" while legacy's workers must not
        consume the legacy queue; absent, they do. Persistent (no TTL)."""
        return self.prefix + "consuming"

    @property
    def pending(self) -> str:
        """Big Bertha: the hash of pre-aggregated increments not yet taken by a flush."""
        return self.prefix + "bb:pending"

    @property
    def batches(self) -> str:
        """Big Bertha: sorted set of the batches taken by flushes (score = take time)."""
        return self.prefix + "bb:batches"

    def batch(self, batch_id: str) -> str:
        return self.prefix + "bb:batch:" + batch_id

    def lease(self, batch_id: str) -> str:
        """Big Bertha: the flusher working a batch holds this key (its token, with a TTL)."""
        return self.prefix + "bb:lease:" + batch_id

    @property
    def lease_prefix(self) -> str:
        return self.prefix + "bb:lease:"

    def slot(self, slot_id: str) -> str:
        """A worker slot's (process, thread) last applied delivery: makes a retry of the
        Redis step idempotent."""
        return self.prefix + "slot:" + slot_id

    @property
    def workers(self) -> str:
        """Hash of worker node name -> JSON state (running, stopped, failed with reason)."""
        return self.prefix + "workers"

    @property
    def stats(self) -> str:
        """Hash of operational counters (processed, dead-lettered by reason, flushes...)."""
        return self.prefix + "stats"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix (for cleanup)."""
        return _glob_escape(self.prefix) + "*"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
