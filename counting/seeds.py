"""Seed records: what a customer was already counted unique under, handed to Abacus's
uniqueness state at the m1 hand-over (issue 14), and what absorbing one means.

Legacy keeps, per (company, customer), the account keys its Check Uniques already counted
that customer under. Before the live bridge starts, those sets are written into the live
topic as seed records; the statistic job absorbs them: every key a seed names is marked
"customer already counted" in its uniqueness state, nothing is counted, nothing is
dead-lettered. An event of that customer under such a key then adds to `count`, never to
`uniques`. The customer job ignores seeds (customer counters have no uniques).

A seed record is marked by the Kafka header `SEED_HEADER`, never by its body alone: the
bridge copies a publisher's bytes into the live topic, so a body shaped like a seed may come
from anyone, and a record without the header is an event (valid or invalid) whatever its
body. The bridge writes only its own headers (message_id, task_id, content_type, ...), never
a publisher's, so it cannot carry this one; only `abacus.seeds.write_seeds` writes it.

The value, UTF-8 JSON:

    {"abacus_seed": 1, "company_id": "C", "customer_id": "X",
     "keys": [[statistic_id, resolution, bucket, facet, value], ...]}

A (company, customer) with many keys is split into several records (`seed_records`):
absorbing two seeds is absorbing the union of their keys.

Absorbing is upward-closed (`absorbed_keys`): a customer counted in an hour was counted in
that hour's day and month (the same events), so a seeded hour key seeds its day and month
keys too. The jobs' uniqueness check relies on it (a pair not first in its hour is not first
in its day), and so does the contract: `Recount.absorb` uses the same closure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from counting.buckets import LABEL_WIDTH
from counting.events import parse_event
from counting.fanout import account_keys
from counting.model import RESOLUTIONS, AccountKey, Event

SEED_HEADER = "abacus-seed"  # the Kafka header that makes a record a seed; its value:
SEED_VERSION = b"1"  # the format version (the body's "abacus_seed")
MAX_SEED_BYTES = 512 * 1024  # a seed record's value at most (the topics take 8 MiB)
_ID_CHARS = 64  # company_id, customer_id, statistic_id: as an event's (SEMANTICS.md §1)

# (company_id, customer_id, the account keys the customer was counted unique under): the
# shape legacy's Check Uniques sets and Abacus's seeds both use (issue 14's design)
Entry = tuple[str, str, list[AccountKey]]
Headers = Sequence[tuple[str, bytes | str | None]] | None


class SeedError(ValueError):
    """A record that carries the seed header but is not a seed; the message says why."""


@dataclass(frozen=True, slots=True)
class Seed:
    """One seed record: a customer of a company and keys it was counted unique under (all of
    that company)."""

    company_id: str
    customer_id: str
    keys: tuple[AccountKey, ...]


def is_seed(headers: Headers) -> bool:
    """Whether a Kafka record with these headers is a seed: it carries `SEED_HEADER`."""
    return bool(headers) and any(name == SEED_HEADER for name, _ in headers or ())


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= _ID_CHARS:
        raise SeedError(f"{what} must be a string of 1..{_ID_CHARS} characters")
    return value


def _check_key(key: AccountKey, company_id: str) -> AccountKey:
    if key.company_id != company_id:
        raise SeedError(f"a key of company {key.company_id!r} in a seed of {company_id!r}")
    _id(key.statistic_id, "statistic_id")
    if key.resolution not in RESOLUTIONS:
        raise SeedError(f"unknown resolution {key.resolution!r}")
    if not isinstance(key.bucket, str) or len(key.bucket) != LABEL_WIDTH[key.resolution]:
        raise SeedError(f"bad {key.resolution} bucket {key.bucket!r}")
    if not isinstance(key.facet, str) or not isinstance(key.value, str):
        raise SeedError("facet and value must be strings")
    return key


def seed_records(
    company_id: str,
    customer_id: str,
    keys: Iterable[AccountKey],
    max_bytes: int = MAX_SEED_BYTES,
) -> list[bytes]:
    """The values of the seed records of one (company, customer): its keys (deduplicated,
    sorted) in as few records as fit `max_bytes` each; none without keys. SeedError when an
    id or a key is not one a seed can hold."""
    _id(company_id, "company_id")
    _id(customer_id, "customer_id")
    unique = sorted({_check_key(AccountKey(*k), company_id) for k in keys})
    head = json.dumps(
        {"abacus_seed": int(SEED_VERSION), "company_id": company_id, "customer_id": customer_id},
        ensure_ascii=False,
        separators=(",", ":"),
    )[:-1]
    records: list[bytes] = []
    part: list[str] = []
    size = len(head.encode()) + len(',"keys":[]}')
    for key in unique:
        text = json.dumps(key[1:], ensure_ascii=False, separators=(",", ":"))
        grow = len(text.encode()) + 1
        if part and size + grow > max_bytes:
            records.append(_record(head, part))
            part, size = [], len(head.encode()) + len(',"keys":[]}')
        if size + grow > max_bytes:
            raise SeedError(f"one key is larger than a seed record may be: {key}")
        part.append(text)
        size += grow
    if part:
        records.append(_record(head, part))
    return records


def _record(head: str, keys: list[str]) -> bytes:
    return f'{head},"keys":[{",".join(keys)}]}}'.encode()


def parse_seed(value: bytes | str) -> Seed:
    """A seed record's value as a Seed; SeedError when it is not one."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise SeedError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("abacus_seed") != int(SEED_VERSION):
        raise SeedError(f"not a seed of format {SEED_VERSION.decode()}")
    company = _id(data.get("company_id"), "company_id")
    customer = _id(data.get("customer_id"), "customer_id")
    raw_keys = data.get("keys")
    if not isinstance(raw_keys, list):
        raise SeedError("keys must be a list")
    keys = []
    for raw in raw_keys:
        if not isinstance(raw, list) or len(raw) != 5:
            raise SeedError("a key is [statistic_id, resolution, bucket, facet, value]")
        keys.append(_check_key(AccountKey(company, *raw), company))
    return Seed(company, customer, tuple(keys))


def seed_of(value: bytes | str, headers: Headers) -> Seed | None:
    """The seed a Kafka record holds, or None when it is not a seed (no `SEED_HEADER`: an
    event, whatever its body). SeedError when it carries the header but is no seed."""
    return parse_seed(value) if is_seed(headers) else None


def absorbed_keys(keys: Iterable[AccountKey]) -> set[AccountKey]:
    """The keys a seed marks: each key and the same (statistic, facet, value) at every
    coarser resolution, whose label is a prefix of it (an hour lies in one day and month)."""
    out: set[AccountKey] = set()
    for key in keys:
        out.add(key)
        for coarser in RESOLUTIONS[RESOLUTIONS.index(key.resolution) + 1 :]:
            out.add(key._replace(resolution=coarser, bucket=key.bucket[: LABEL_WIDTH[coarser]]))
    return out


def seed_groups(seed: Seed) -> Iterator[tuple[str, str, str, list[tuple[str, str]]]]:
    """A seed's absorbed keys grouped as the statistic job's state holds them: (statistic,
    resolution, bucket, its (facet, value) pairs), sorted."""
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for key in sorted(absorbed_keys(seed.keys)):
        groups.setdefault((key.statistic_id, key.resolution, key.bucket), []).append(
            (key.facet, key.value)
        )
    for (statistic, resolution, bucket), pairs in groups.items():
        yield statistic, resolution, bucket, pairs


class CountedKeys:
    """What a live topic says each customer was counted under, for legacy's Check Uniques
    at a rollback: per (company, customer), the account keys (`counting.account_keys`) of
    its valid events' first deliveries (de-duplicated by event_id, as the jobs), and the keys
    its seeds marked (`absorbed_keys`: what was seeded stays seen). Records in topic order."""

    def __init__(self) -> None:
        self._seen_ids: set[str] = set()
        self._keys: dict[tuple[str, str], set[AccountKey]] = {}
        self.events = self.duplicates = self.invalid = self.seeds = self.bad_seeds = 0

    def add_record(self, value: bytes | None, headers: Headers) -> None:
        """One Kafka record of the topic (its value and headers)."""
        if is_seed(headers):
            try:
                seed = parse_seed(value or b"")
            except SeedError:
                self.bad_seeds += 1  # the job dead-letters it: it marks nothing
                return
            self.seeds += 1
            self._add(seed.company_id, seed.customer_id, absorbed_keys(seed.keys))
            return
        parsed = parse_event(value if value is not None else b"")
        if not isinstance(parsed, Event):
            self.invalid += 1
            return
        if parsed.event_id in self._seen_ids:
            self.duplicates += 1
            return
        self._seen_ids.add(parsed.event_id)
        self.events += 1
        self._add(parsed.company_id, parsed.customer_id, account_keys(parsed))

    def _add(self, company: str, customer: str, keys: Iterable[AccountKey]) -> None:
        self._keys.setdefault((company, customer), set()).update(keys)

    def entries(self) -> list[Entry]:
        """Per (company, customer), sorted, its keys sorted."""
        return [
            (company, customer, sorted(keys))
            for (company, customer), keys in sorted(self._keys.items())
        ]
