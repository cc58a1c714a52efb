"""Safe output: data (ids, names, messages from servers and files) that reaches a terminal
or a CSV file can act neither as markup, nor as a terminal control, nor as a formula.

Every CLI renders data through these helpers, never by pasting it into a rich markup string
or a CSV row:

- `term(value)`: a rich `Text` (never parsed for markup or emoji codes, so a `company_id` of
  `[/bold]` or `[link=...]` prints as itself) with control characters, ANSI escapes, bidi
  overrides and lone surrogates rendered visibly escaped (`\\x1b`, `\\u202e`, `\\udc80`).
- `visible(value)`: the plain `str`, for `click.echo` lines that carry data and for
  renderables told not to parse markup (`TextColumn(..., markup=False)`). There is no
  "escape for a markup string": rich's escape leaves emoji codes (`:thumbs_up:`) live, so
  data never goes into a markup string; a styled line is `term(a, style=...) + term(b)`.
- `csv_cell(value)` / `csv_row(record)`: a string cell that a spreadsheet would read as a
  formula (OWASP's CSV-injection rule: it starts with `= + - @`, a tab or a carriage
  return) is prefixed with `'`. Numbers stay numbers: ints, floats and strings that are a
  plain decimal number (`-3`, `+2.5`) are written as they are.

It sits beside the settings because both are the edges every package may use; `visible`'s
rule is `counting.text`'s (the bottom layer, so counting's own commands use it too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from counting.text import visible

if TYPE_CHECKING:  # rich is imported where it renders: settings stay light for workers
    from rich.text import Text

__all__ = ["csv_cell", "csv_row", "term", "visible"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def term(value: Any, style: str = "") -> Text:
    """A table cell or a line of data: plain text, never markup, nothing raw."""
    from rich.text import Text

    return Text(visible(value), style=style)


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: formula-like strings get a leading `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with every cell made safe by `csv_cell`."""
    return {k: csv_cell(v) for k, v in record.items()}
