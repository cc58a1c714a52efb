"""Text that can always be written: dead letters of any input (pure).

A publisher controls every string a pipeline may have to write back out: an `event_id`
holding a lone surrogate (the JSON escape "\\ud800" decodes to one), an AMQP property of
invalid UTF-8. Encoding such a value raises, and a dead-letter writer that raises stops
the pipeline on exactly the input it exists to keep. `escape` makes any value writable,
and says whether it had to change it, so the writer can say so too (an `escaped` header).
"""

from __future__ import annotations


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
