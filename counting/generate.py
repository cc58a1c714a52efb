"""A deterministic generator of hydrated events with a realistic skew (pure: no I/O).

A few large companies and many small ones (Zipf), popular campaigns, heavy customers;
each company reports in one time zone; optional duplicates (redeliveries of an earlier
event, same event_id) and late events (hours to days behind the stream). Every benchmark,
test corpus and demo uses it.
"""

from __future__ import annotations

import itertools
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEZONES: tuple[str, ...] = ("UTC", "America/New_York", "Asia/Kolkata")
BROWSERS = ("Safari 12.0.1", "Chrome 120.0", "Firefox 121.0", "Edge 119.0", "Outlook 16.0")
TYPES = ("open", "click", "bounce", "unsubscribe")
STATISTICS = (
    "email_opened",
    "email_clicked",
    "email_bounced",
    "placed_order",
    "viewed_product",
    "started_checkout",
    "sms_sent",
    "unsubscribed",
)


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    n: int = 1000
    seed: int = 0
    companies: int = 50
    customers: int = 20_000  # across all companies
    statistics: int = 6
    campaigns: int = 40  # per company
    facets: int = 4  # scalar properties per event (0..8)
    timezones: tuple[str, ...] = DEFAULT_TIMEZONES
    duplicate_share: float = 0.0
    late_share: float = 0.0
    start_ts: int = 1_764_547_200  # 2025-12-01T00:00:00Z
    span_s: int = 86_400
    skew: float = 1.1  # Zipf exponent of companies, campaigns and customers
    extras: tuple[str, ...] = field(default=("tags",))  # non-facet properties sometimes added

    def __post_init__(self) -> None:
        if self.n < 0 or self.companies < 1 or self.customers < 1 or self.statistics < 1:
            raise ValueError("n >= 0 and companies, customers, statistics >= 1")
        if not 0 <= self.facets <= 8:
            raise ValueError("facets must be within 0..8")
        if not (0 <= self.duplicate_share < 1 and 0 <= self.late_share < 1):
            raise ValueError("duplicate_share and late_share must be within [0, 1)")
        if not self.timezones:
            raise ValueError("at least one time zone")


def _zipf_cum(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


class _Picker:
    """Zipf-weighted choice of an index in 0..n-1 (0 is the most popular)."""

    __slots__ = ("_cum", "_rng", "_total")

    def __init__(self, rng: random.Random, n: int, s: float) -> None:
        self._rng, self._cum = rng, _zipf_cum(n, s)
        self._total = self._cum[-1]

    def __call__(self) -> int:
        return min(bisect(self._cum, self._rng.random() * self._total), len(self._cum) - 1)


def generate(config: GeneratorConfig) -> Iterator[dict[str, Any]]:
    """n hydrated events (duplicates included in n), the same for the same config."""
    rng = random.Random(config.seed)
    company = _Picker(rng, config.companies, config.skew)
    statistic = _Picker(rng, config.statistics, 0.8)
    campaign = _Picker(rng, config.campaigns, config.skew)
    # heavy customers: each company draws from its own slice of the customer space
    per_company = max(1, config.customers // config.companies)
    customer = _Picker(rng, per_company, config.skew)
    statistic_names = [
        STATISTICS[i] if i < len(STATISTICS) else f"statistic_{i}" for i in range(config.statistics)
    ]
    recent: list[dict[str, Any]] = []
    for i in range(config.n):
        if recent and rng.random() < config.duplicate_share:
            yield dict(recent[rng.randrange(len(recent))])
            continue
        c = company()
        ts = config.start_ts + config.span_s * i / max(config.n, 1) + rng.random()
        if rng.random() < config.late_share:
            ts -= rng.uniform(3600, 3 * 86400)
        event = {
            "event_id": f"{config.seed:x}-{i:09d}",
            "company_id": f"COM{c:04d}",
            "customer_id": f"CUS{c:04d}-{customer():06d}",
            "statistic_id": statistic_names[statistic()],
            "timestamp": round(ts, 3),
            "timezone": config.timezones[c % len(config.timezones)],
            "properties": _properties(rng, config, campaign()),
        }
        recent.append(event)
        if len(recent) > 1000:
            recent.pop(rng.randrange(1000))
        yield event


def _properties(rng: random.Random, config: GeneratorConfig, campaign: int) -> dict[str, Any]:
    pool: list[tuple[str, Any]] = [
        ("campaign_name", f"campaign {campaign}"),
        ("browser", BROWSERS[min(int(rng.expovariate(1.2)), len(BROWSERS) - 1)]),
        ("type", TYPES[min(int(rng.expovariate(1.5)), len(TYPES) - 1)]),
        ("is_mobile", rng.random() < 0.4),
        ("items", rng.randint(1, 5)),
        ("value", round(rng.uniform(5, 200), 2)),
        ("message_id", f"MSG{campaign:03d}-{rng.randrange(8)}"),
        ("ip", "" if rng.random() < 0.5 else f"10.0.{rng.randrange(4)}.{rng.randrange(8)}"),
    ]
    props = dict(pool[: config.facets])
    if "tags" in config.extras and rng.random() < 0.1:
        props["tags"] = ["vip", "b2c"]  # a list: not a facet
    return props
