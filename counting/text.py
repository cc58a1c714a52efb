"""Text that can always be written, and shown: dead letters of any input (pure).

A publisher controls every string a pipeline may have to write back out: an `event_id`
holding a lone surrogate (the JSON escape "\\ud800" decodes to one), an AMQP property of
invalid UTF-8. Encoding such a value raises, and a dead-letter writer that raises stops
the pipeline on exactly the input it exists to keep. `escape` makes any value writable,
and says whether it had to change it, so the writer can say so too (an `escaped` header).

The same data reaches terminals: `visible` escapes what a terminal would act on (the
rule of `settings.output`, which every CLI renders through; it lives here so that
counting's own commands use it without importing a layer above).
"""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls (ESC starts every ANSI sequence), DEL, the bidi marks, embeddings,
# overrides and isolates (Trojan Source), line/paragraph separators, lone surrogates (which
# no terminal encoding can write: printing one raises UnicodeEncodeError)
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(value: str | bytes) -> tuple[str, bool]:
    """`value` as text that always encodes to UTF-8, and whether anything was escaped.

    Valid text comes back unchanged. A lone surrogate becomes its Python escape (`\\ud800`),
    an invalid byte its escape (`\\xff`); the flag tells those from the same characters
    sent literally.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), False
        except UnicodeDecodeError:
            return value.decode("utf-8", "backslashreplace"), True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8"), True
    return value, False


def escape_bytes(value: str | bytes) -> tuple[bytes, bool]:
    """`escape`, encoded as UTF-8 (for a Kafka or AMQP header)."""
    text, escaped = escape(value)
    return text.encode("utf-8"), escaped


def _escaped(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(value: Any, newlines: bool = False) -> str:
    """`value` as text with every control, bidi and surrogate character visibly escaped
    (`newlines=True` keeps line breaks: a message of several lines)."""
    text = value if isinstance(value, str) else str(value)
    if newlines:
        return "\n".join(_UNSAFE.sub(_escaped, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escaped, text)
