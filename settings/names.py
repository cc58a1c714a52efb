"""Names that reach CQL text or file paths, checked before they get there.

CQL takes values as bound parameters, but identifiers (keyspaces) and the replication map
of `CREATE KEYSPACE` are part of the statement text; a job name or prefix becomes a file
name under the data directory (and an `rmtree` target). Each check raises `ValueError`
with one line saying what is wrong and what is allowed. Topic, queue, exchange and Redis
names are not checked here: their clients send them as data, never as code or paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from settings.output import visible

KEYSPACE_MAX = 48  # Cassandra's limit on a keyspace name
# the longest logical keyspace the stores use ("abacus_serving"): a prefix leaves room for it
LONGEST_LOGICAL = 14
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_]*)?")
# a Java class name, plain or qualified (org.apache.cassandra.locator.SimpleStrategy)
_JAVA_CLASS = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*")
STRATEGIES = ("SimpleStrategy", "NetworkTopologyStrategy", "LocalStrategy", "EverywhereStrategy")
_DC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")


def shown(value: Any, limit: int = 60) -> str:
    """A value quoted for an error message: escaped, and cut at `limit` characters."""
    text = visible(value)
    return "'" + (text if len(text) <= limit else text[:limit] + "...") + "'"


def check_keyspace(name: str) -> str:
    """A keyspace name as CQL takes it unquoted: a letter, then letters, digits, `_`;
    at most 48 characters."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"keyspace name {shown(name)} is not a CQL identifier "
            "(a letter, then letters, digits or _)"
        )
    if len(name) > KEYSPACE_MAX:
        raise ValueError(
            f"keyspace name {shown(name)} is {len(name)} characters long, "
            f"more than Cassandra's {KEYSPACE_MAX}: shorten "
            "cassandra.keyspace_prefix"
        )
    return name


def check_keyspace_prefix(prefix: str) -> str:
    """Empty, or an identifier start short enough for every keyspace it prefixes."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"{shown(prefix)} is not allowed: letters, digits and _ only, "
            "starting with a letter (or empty)"
        )
    room = KEYSPACE_MAX - LONGEST_LOGICAL
    if len(prefix) > room:
        raise ValueError(
            f"{shown(prefix)} is {len(prefix)} characters long: at most {room}, "
            f"so every keyspace name stays within {KEYSPACE_MAX}"
        )
    return prefix


def _factor(key: str, value: Any) -> int:
    if isinstance(value, bool):
        value = None
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise ValueError(
            f"replication {shown(key)}: the factor must be a positive integer, "
            f"not {shown(value, 20)}"
        )
    return value


def check_replication(replication: Mapping[str, Any]) -> dict[str, Any]:
    """The `CREATE KEYSPACE ... WITH replication` map: `class` a known strategy or a Java
    class name, every other key `replication_factor` or a data-centre name, every factor a
    positive integer."""
    if not isinstance(replication, Mapping):
        raise ValueError(
            'must be a table such as {class = "SimpleStrategy", replication_factor = 1}'
        )
    strategy = replication.get("class")
    if not isinstance(strategy, str) or not (
        strategy in STRATEGIES or _JAVA_CLASS.fullmatch(strategy)
    ):
        raise ValueError(
            f"class {shown(strategy)}: one of {', '.join(STRATEGIES)} or a Java class name"
        )
    checked: dict[str, Any] = {"class": strategy}
    for key, value in replication.items():
        if key == "class":
            continue
        if not isinstance(key, str) or not _DC.fullmatch(key):
            raise ValueError(
                f"key {shown(key)}: replication_factor or a data-centre name "
                "(letters, digits, _ . -)"
            )
        checked[key] = _factor(key, value)
    if len(checked) == 1:
        raise ValueError(f"class {strategy}: give replication_factor or a factor per data centre")
    return checked


def check_file_name(value: str, empty_ok: bool = False) -> str:
    """A name that becomes a file or directory name: letters, digits, `_ . -`, not
    starting with `.` or `-`, at most 100 characters (no `/`, no `..`)."""
    if value == "" and empty_ok:
        return value
    if not _FILE_NAME.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not allowed: letters, digits and _ . - "
            "only, not starting with . or -, at most 100 characters"
        )
    return value
