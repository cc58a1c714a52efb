"""Facets: the scalar properties of an event, as text (SEMANTICS.md §2)."""

from __future__ import annotations

import math
from typing import Any

from counting.model import BigInt

MAX_FACET_VALUE_CHARS = 256


class NonFiniteFloat(ValueError):
    """A property value is NaN or infinite: the event is invalid (bad_type)."""


def facet_value(value: Any) -> str | None:
    """The facet text of one property value, or None when it is not a facet."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_FACET_VALUE_CHARS else None
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if not math.isfinite(value):
            raise NonFiniteFloat(repr(value))
        return repr(value)
    if kind is BigInt:  # an integer too long to convert: its digits are its text
        return value.digits  # type: ignore[no-any-return]
    return None  # null, list, object (and anything else): not a facet


def facets_of(properties: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """All facets (key, value-as-text) of a properties object, in key order of the input."""
    out = []
    for key, value in properties.items():
        text = facet_value(value)
        if text is not None:
            out.append((key, text))
    return tuple(out)
