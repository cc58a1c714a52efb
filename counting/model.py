"""The values of the counting contract (SEMANTICS.md): plain, frozen, picklable."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Reason(StrEnum):
    """Why an event is invalid, in the order the checks run (SEMANTICS.md §1)."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_LENGTH = "bad_length"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_TIMEZONE = "bad_timezone"
    TOO_MANY_PROPERTIES = "too_many_properties"
    BAD_PROPERTY_KEY = "bad_property_key"


RESOLUTIONS: tuple[str, str, str] = ("hour", "day", "month")


class BigInt:
    """A JSON integer longer than Python's integer-conversion limit (4,300 digits by
    default), kept as its digits: converting it would cost time quadratic in its length
    (CVE-2020-10735), and lifting the limit would do so for the whole process. No valid
    timestamp is that long (it is out of range), and a property's facet text is its
    digits, so the contract never needs its value."""

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {len(self.digits.lstrip('-'))} digits>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BigInt) and other.digits == self.digits

    def __hash__(self) -> int:
        return hash(self.digits)

    # longer than any int or float can be compared with here: only its sign matters
    def __lt__(self, other: object) -> bool:
        return self.digits.startswith("-")

    def __le__(self, other: object) -> bool:
        return self.digits.startswith("-")

    def __gt__(self, other: object) -> bool:
        return not self.digits.startswith("-")

    def __ge__(self, other: object) -> bool:
        return not self.digits.startswith("-")


class Event(NamedTuple):
    """A valid hydrated event, reduced to what is counted (a NamedTuple, like the keys: it
    is built once per event on the hot path, and a frozen dataclass costs 3x more)."""

    event_id: str
    company_id: str
    customer_id: str
    statistic_id: str
    timestamp: float | int
    timezone: str
    facets: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invalid event: its reason, its event_id where it has a usable one, and a detail."""

    reason: Reason
    event_id: str | None
    detail: str


# Keys are NamedTuples, not dataclasses: they are hashed and compared millions of times
# (dict keys of every aggregation), and a tuple does both in C, about 3x faster.
class AccountKey(NamedTuple):
    """One account-level counter ("Abacus Statistic"); facet = value = "" is the total."""

    company_id: str
    statistic_id: str
    resolution: str
    bucket: str
    facet: str
    value: str


class CustomerKey(NamedTuple):
    """One customer-level counter ("Abacus Customer")."""

    company_id: str
    customer_id: str
    statistic_id: str
    resolution: str
    bucket: str


# `count` shadows tuple.count on purpose: it is the field's name in the exchange format
class AccountCount(NamedTuple):
    key: AccountKey
    count: int  # type: ignore[assignment]
    uniques: int


class CustomerCount(NamedTuple):
    key: CustomerKey
    count: int  # type: ignore[assignment]
