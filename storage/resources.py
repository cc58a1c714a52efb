"""What storage owns on the servers, created and removed: `provision(settings, names)`,
`teardown(settings, names)`: the keyspaces (and their tables) of the count stores and ops,
by logical name (`STORES`, `OPS`)."""

from __future__ import annotations

from collections.abc import Sequence

from settings import Settings
from storage.schema import apply_schema, keyspace_of


def provision(settings: Settings, names: Sequence[str] | None = None) -> int:
    """Create the keyspaces and tables of `names` (default: every store and ops) that are
    missing; the number of statements run (`apply_schema`)."""
    return apply_schema(settings.cassandra, None if names is None else list(names))


def teardown(settings: Settings, names: Sequence[str]) -> None:
    """Drop the keyspaces of `names`, data and all (what is already gone is fine)."""
    from storage.cassandra import connect

    session = connect(settings.cassandra)
    try:
        for name in names:
            session.execute(
                f"DROP KEYSPACE IF EXISTS {keyspace_of(settings.cassandra, name)}", timeout=120
            )
    finally:
        session.cluster.shutdown()
